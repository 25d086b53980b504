"""No configured secret ever appears in a log line: structlog events, stdlib records, tracebacks, the CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from worker.logs import SecretScrubber, configure_logging
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SASL = "sasl-Pa55word!"
REDIS = "r3dis@pw:x"  # an unencoded '@' and ':' in the URL, as people write them
REDIS_OVERRIDE = "override-\u00e9-secret"
SECRETS = [SASL, REDIS, REDIS_OVERRIDE, "r3dis%40pw:x"]


def _settings() -> Settings:
    return Settings(
        kafka_sasl_password=SASL,
        redis_url=f"redis://:{REDIS}@127.0.0.1:6379/0",
        redis_password=REDIS_OVERRIDE,
        kafka_bootstrap="SASL_SSL://bob:kafka-url-pw@b1:9092",
    )


def _assert_clean(text: str, extra: tuple[str, ...] = ()) -> None:
    for secret in (*SECRETS, "kafka-url-pw", *extra):
        assert secret not in text, f"secret {secret!r} leaked:\n{text}"
        assert json.dumps(secret)[1:-1] not in text, f"secret {secret!r} leaked (JSON-escaped):\n{text}"


def test_redacted_masks_secret_fields_and_url_passwords():
    shown = _settings().redacted()
    assert shown["kafka_sasl_password"] == "***" and shown["redis_password"] == "***"
    assert shown["redis_url"] == "redis://:***@127.0.0.1:6379/0"
    assert shown["kafka_bootstrap"] == "SASL_SSL://bob:***@b1:9092"
    _assert_clean(json.dumps(shown))
    assert Settings().redacted()["redis_url"] == "redis://127.0.0.1:6379/0"  # nothing to mask: unchanged


@pytest.fixture
def restored_logging():
    """Put logging back as it was: handlers bound to this test's captured stderr must not
    outlive it (background kafka-python threads of other tests log through the root logger)."""
    root, kafka = logging.getLogger(), logging.getLogger("kafka")
    saved = root.handlers[:], root.level, kafka.level, structlog.get_config()
    yield
    handlers, level, kafka_level, config = saved
    root.handlers[:] = handlers
    root.setLevel(level)
    kafka.setLevel(kafka_level)
    structlog.configure(**config)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_no_secret_in_any_log_line(fmt, capfd, restored_logging):
    settings = _settings()
    configure_logging("debug", fmt, settings.secret_values())
    log = structlog.get_logger("test")
    log.info("settings", **settings.redacted())
    log.info("settings_raw", settings=settings, url=settings.redis_url, nested={"a": [settings.kafka_sasl_password]})
    log.warning(f"message text carries {REDIS_OVERRIDE} and {settings.redis_url}")
    log.info("bound", **{"key": f"prefix-{SASL}-suffix"})
    try:
        raise ConnectionError(f"AUTH failed for {settings.redis_url} with {SASL}")
    except ConnectionError:
        log.exception("redis_failed")
    # third-party libraries log through the stdlib (kafka-python, redis-py)
    logging.getLogger("kafka.conn").warning("SASL auth %s for %s failed", SASL, settings.kafka_bootstrap)
    try:
        raise RuntimeError(REDIS)
    except RuntimeError:
        logging.getLogger("redis").exception("connection to %s lost", settings.redis_url)
    # any URL password, configured or not
    log.info("fetching", uri="https://user:unconfigured-pw@cdn.example.com/v.mp4")
    err = capfd.readouterr().err
    assert err.count("\n") >= 8, err  # every line above was written
    assert "AUTH failed" in err and "SASL auth" in err and "***" in err
    _assert_clean(err, extra=("unconfigured-pw",))


def test_scrubber_masks_the_longest_secret_whole():
    scrub = SecretScrubber(["abc", "abcdef"]).scrub
    assert scrub("x abcdef y abc") == "x *** y ***"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DFD_")}
    base["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], env={**base, **env}, capture_output=True, text=True, timeout=120)


def test_cli_settings_and_a_failing_scan_leak_no_secret(tmp_path):
    env = {
        "DFD_KAFKA_SASL_PASSWORD": SASL,
        "DFD_REDIS_URL": f"redis://:{REDIS}@127.0.0.1:6379/0",
        "DFD_REDIS_PASSWORD": REDIS_OVERRIDE,
        "DFD_KAFKA_BOOTSTRAP": "SASL_SSL://bob:kafka-url-pw@b1:9092",
        "DFD_LOG_LEVEL": "debug",
    }
    shown = _cli("settings", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["redis_url"] == "redis://:***@127.0.0.1:6379/0"
    _assert_clean(shown.stdout + shown.stderr)
    # a scan without a model bundle logs its failure: still nothing secret
    failed = _cli("scan", str(tmp_path / "none.mp4"), env={**env, "DFD_MODEL_DIR": str(tmp_path / "no-bundle")})
    assert failed.returncode != 0 and failed.stderr
    _assert_clean(failed.stdout + failed.stderr)
