"""The key file (hashes only), how keys are presented, and the token bucket (pure logic, no stack)."""

from __future__ import annotations

import base64

import pytest

from api.cli import main
from api.keys import KeyStore, RateLimiter, hash_key, key_from_headers


def test_new_key_line_loads_and_only_the_hash_is_stored(tmp_path, capsys):
    assert main(["new-key", "moderation", "--scopes", "read,submit"]) == 0
    out = capsys.readouterr()
    key = out.err.split(": ")[-1].strip()
    line = out.out.strip()
    assert key not in line and line.startswith(hash_key(key))
    path = tmp_path / "keys"
    path.write_text(f"# comment\n\n{line}\n")
    store = KeyStore.load(path)
    assert store.find(key).name == "moderation" and store.find(key).scopes == {"read", "submit"}
    assert store.find(key + "x") is None


@pytest.mark.parametrize("line", ["abc reader read", f"{'a' * 64} reader", f"{'a' * 64} reader admin", f"{'a' * 64} r read,"])
def test_malformed_key_lines_fail_at_start(tmp_path, line):
    path = tmp_path / "keys"
    path.write_text(line + "\n")
    if line.endswith("read,"):  # a trailing comma is harmless
        assert len(KeyStore.load(path)) == 1
    else:
        with pytest.raises(ValueError, match="keys:1"):
            KeyStore.load(path)


def test_key_from_headers():
    basic = base64.b64encode(b"user:the-key").decode()
    assert key_from_headers(None, " k ") == "k"
    assert key_from_headers("Bearer k2", None) == "k2"
    assert key_from_headers(f"Basic {basic}", None) == "the-key"
    assert key_from_headers("Basic !!", None) is None
    assert key_from_headers("Digest x", None) is None
    assert key_from_headers(None, None) is None


def test_token_bucket_allows_the_burst_then_the_rate(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("api.keys.time.monotonic", lambda: now[0])
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0  # per key
    now[0] += 0.5
    assert limiter.take("a") == 0
