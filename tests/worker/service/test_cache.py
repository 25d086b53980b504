"""The Redis verdict cache: key scheme, TTL, and what happens when Redis is away."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from worker.localstack import free_port
from worker.service import cache as cache_mod
from worker.service.cache import VerdictCache, connect, content_key, request_key
from worker.settings import Settings
from worker.types import ModelInfo, Verdict

MODEL = ModelInfo("m", "1", "ab" * 32)


def _v(rid, **kw):
    return Verdict(rid, "u", kw.pop("label", "real"), score=0.2, model=MODEL, content_sha256="cd" * 32, **kw)


def test_key_scheme():
    assert request_key("dfd", "r1") == "dfd:verdict:req:r1"
    assert content_key("dfd", "cd" * 32, "ab" * 32) == f"dfd:verdict:sha:{'cd' * 32}:{'ab' * 8}"


def test_connect_passes_password_and_tls_settings():
    client = connect(Settings(redis_url="rediss://h:6380/2", redis_password="pw", redis_ssl_ca="/ca.pem"))
    kw = client.connection_pool.connection_kwargs
    assert kw["password"] == "pw" and kw["ssl_ca_certs"] == "/ca.pem" and kw["db"] == 2


@pytest.mark.broker
def test_put_get_with_ttl_and_cached_verdicts_not_stored_by_content(stack):
    settings = stack.settings()
    cache = VerdictCache.from_settings(settings.replace(redis_ttl_s=120))
    assert cache.put(_v("a"))
    assert cache.get("a").score == 0.2
    assert 0 < cache.client.ttl(request_key(settings.redis_key_prefix, "a")) <= 120
    assert cache.get_by_content("cd" * 32, MODEL.sha256).request_id == "a"
    assert cache.put(_v("b", cached=True))  # an answer from the cache does not overwrite the original
    assert cache.get_by_content("cd" * 32, MODEL.sha256).request_id == "a"
    assert cache.get_by_content("cd" * 32, "ff" * 32) is None  # another model never reuses it
    assert VerdictCache(cache.client, settings.redis_key_prefix, 60, lookup_by_content=False).get_by_content("cd" * 32, MODEL.sha256) is None


def test_redis_down_is_counted_not_raised(monkeypatch):
    monkeypatch.setattr(cache_mod, "OUTAGE_BACKOFF_S", 0.0)
    cache = VerdictCache.from_settings(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    before = REGISTRY.get_sample_value("dfd_failures_total", {"reason": "cache_write"}) or 0.0
    assert cache.put(_v("x")) is False
    assert cache.get("x") is None
    assert cache.ping() is False
    assert REGISTRY.get_sample_value("dfd_failures_total", {"reason": "cache_write"}) == before + 1
