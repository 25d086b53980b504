"""The one kafka-python internal the worker relies on: pausing on the client's own event loop.

kafka-python 3 runs rebalance hooks as coroutines on its network thread. A hook that blocks
(time.sleep, a lock, a blocking commit) stops heartbeats and gets the member evicted, so the
revoke drain waits by awaiting `loop_sleep`, which hands control back to the client's loop.
kafka-python exposes no public awaitable for that; this module wraps the internal one
(`kafka.net.selector.KernelEvent("_sleep", s)`, what `NetworkSelector.sleep` returns) so a
kafka-python upgrade that changes it breaks one small, tested file.
"""

from __future__ import annotations

from kafka.net.selector import KernelEvent


def loop_sleep(seconds: float) -> KernelEvent:
    """An awaitable pause of `seconds` on kafka-python's event loop (other tasks keep running)."""
    return KernelEvent("_sleep", max(0.0, seconds))
