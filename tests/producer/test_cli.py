"""`dfd-producer` against the real broker and Redis (no worker: verdicts are planted)."""

from __future__ import annotations

import io
import json

import pytest

from producer import cli
from tests.fixtures.stack import read_topic
from worker.localstack import settings_env
from worker.service.cache import VerdictCache
from worker.service.kafka_clients import make_producer
from worker.service.messages import encode_verdict
from tests.producer.conftest import make_verdict

pytestmark = pytest.mark.broker

@pytest.fixture
def env(settings, monkeypatch):
    for k, v in settings_env(settings).items():
        monkeypatch.setenv(k, v)
    return settings


def _run(argv, stdin=None, monkeypatch=None):
    out = io.StringIO()
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = cli.main(argv, out=out)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_cli_submit_reads_args_file_and_stdin(env, tmp_path, monkeypatch):
    listing = tmp_path / "uris.txt"
    listing.write_text("# videos\n/v/1.mp4\n\n/v/2.mp4\n")
    code, lines = _run(["submit", "/v/0.mp4", "-", "--file", str(listing), "--metadata", '{"src": "t"}'],
                       stdin="/v/3.mp4\n", monkeypatch=monkeypatch)
    assert code == 0
    # args, file, stdin; local paths go out as absolute file:// URIs
    assert [line["uri"] for line in lines] == ["file:///v/0.mp4", "file:///v/1.mp4", "file:///v/2.mp4", "file:///v/3.mp4"]
    records = read_topic(env.kafka_bootstrap, env.requests_topic, count=4, timeout_s=20)
    docs = {r.json()["request_id"]: r.json() for r in records}
    assert set(docs) == {line["request_id"] for line in lines}
    assert all(d["metadata"] == {"src": "t"} and d["schema_version"] == 1 for d in docs.values())


def test_cli_usage_errors(env):
    assert _run(["submit"])[0] == cli.EXIT_USAGE
    assert _run(["submit", "x", "--metadata", "[1]"])[0] == cli.EXIT_USAGE
    assert _run(["get"])[0] == cli.EXIT_USAGE


def test_get_by_request_id_and_by_hash(env):
    cache = VerdictCache.from_settings(env)
    assert cache.put(make_verdict("r1"))
    code, [doc] = _run(["get", "r1"])
    assert code == 0 and doc["request_id"] == "r1" and doc["label"] == "real"
    code, [doc] = _run(["get", "--sha256", "CD" * 32])
    assert code == 0 and doc["content_sha256"] == "cd" * 32
    code, [doc] = _run(["get", "--sha256", "cd" * 32, "--model-sha256", "ab" * 32])
    assert code == 0 and doc["model"]["version"] == "1.2.3"
    assert _run(["get", "nope"]) == (cli.EXIT_MISSING, [])
    assert _run(["get", "--sha256", "cd" * 32, "--model-sha256", "ee" * 32]) == (cli.EXIT_MISSING, [])


def test_tail_prints_the_results_topic(env):
    producer = make_producer(env)
    for rid in ("t1", "t2", "t3"):
        producer.send(env.results_topic, key=rid.encode(), value=encode_verdict(make_verdict(rid)))
    producer.flush()
    producer.close()
    code, lines = _run(["tail", "--idle-timeout", "2"])
    assert code == 0
    assert sorted(line["request_id"] for line in lines) == ["t1", "t2", "t3"]


def test_submit_sends_relative_paths_as_absolute_file_uris_and_says_where_they_must_lie(env, tmp_path, monkeypatch, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DFD_ALLOWED_ROOTS", str(tmp_path / "elsewhere"))
    code, lines = _run(["submit", "clip.mp4", "https://example.org/v.mp4"])
    assert code == 0
    assert [line["uri"] for line in lines] == [clip.as_uri(), "https://example.org/v.mp4"]
    err = capsys.readouterr().err
    assert "DFD_ALLOWED_ROOTS" in err and str(tmp_path) in err

    monkeypatch.setenv("DFD_ALLOWED_ROOTS", str(tmp_path))
    code, [line] = _run(["submit", "./clip.mp4"])
    assert code == 0 and line["uri"] == clip.as_uri()
    assert "DFD_ALLOWED_ROOTS" not in capsys.readouterr().err  # inside the roots: nothing to warn about

    code, _ = _run(["submit", "missing.mp4"])
    assert code == 0 and "does not exist" in capsys.readouterr().err
