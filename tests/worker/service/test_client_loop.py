"""The adapter over kafka-python's event loop: an awaited loop_sleep pauses without blocking the loop."""

import threading
import time

from kafka.net.selector import NetworkSelector

from worker.service.client_loop import loop_sleep


def test_loop_sleep_waits_while_other_tasks_on_the_client_loop_go_on():
    loop = NetworkSelector()
    loop.start()
    started = threading.Event()
    span: dict[str, float] = {}
    ticks: list[float] = []

    async def sleeper():  # what the revoke drain does: wait on the loop
        span["start"] = time.monotonic()
        started.set()
        await loop_sleep(0.5)
        span["end"] = time.monotonic()

    async def ticker():  # what heartbeats need: the loop keeps running other tasks
        for _ in range(5):
            ticks.append(time.monotonic())
            await loop_sleep(0.02)

    try:
        drain = threading.Thread(target=loop.run, args=(sleeper,))
        drain.start()
        assert started.wait(5)
        loop.run(ticker)
        drain.join(5)
    finally:
        loop.stop(timeout_ms=2000)
    assert span["end"] - span["start"] >= 0.49  # it really waited
    assert len(ticks) == 5 and ticks[-1] < span["end"]  # a blocking wait would have held the ticker back
