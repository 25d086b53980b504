"""structlog set-up shared by every entry point: JSON lines for machines, console for people.

No configured secret reaches a log line: `SecretScrubber` runs last before rendering, on
structlog events and on stdlib records (kafka-python, redis) alike, and replaces every
secret value it was given (`Settings.secret_values()`) and every password inside a
`scheme://user:password@host` URL with `***`, in the message, in every field (nested ones,
and objects through their repr) and in formatted tracebacks.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Iterable

import structlog

from worker.settings import MASK, mask_url_passwords


class SecretScrubber:
    """A structlog processor: every string in the event with the secrets masked."""

    def __init__(self, secrets: Iterable[str] = ()):
        # longest first, so a secret that contains another is masked whole
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, _logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        return {key: self._clean(value) for key, value in event_dict.items()}

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return mask_url_passwords(text)

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, dict):
            return {self._clean(k) if isinstance(k, str) else k: self._clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self._clean(v) for v in value]
        return self.scrub(repr(value))  # what the renderers would print for it, scrubbed


def configure_logging(level: str = "info", fmt: str = "json", secrets: Iterable[str] = ()) -> None:
    """Route structlog and stdlib logging (kafka-python, onnxruntime) to stderr in one format.

    stdout is left to the CLI's own output (one JSON verdict per line), so logs go to stderr.
    `secrets` (pass `settings.secret_values()`) are masked in every line.
    """
    lvl = getattr(logging, level.upper(), logging.INFO)
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    scrubber = SecretScrubber(secrets)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, scrubber, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                scrubber,
                renderer,
            ],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # kafka-python is chatty at INFO about every reconnect; warnings are what an operator needs
    root.setLevel(lvl)
    logging.getLogger("kafka").setLevel(max(lvl, logging.WARNING))
