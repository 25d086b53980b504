"""Reading verdicts: by request id, by content hash (and model), through the worker's Redis cache."""

from __future__ import annotations

from tests.api.conftest import MODEL, make_verdict
from worker.service.cache import VerdictCache


def test_verdict_by_request_id_is_the_cached_one(api):
    verdict = make_verdict("r-1", metadata={"user": 42})
    VerdictCache.from_settings(api.settings).put(verdict)
    with api.client() as http:
        got = http.get("/v1/verdicts/r-1")
        missing = http.get("/v1/verdicts/r-unknown")
    assert got.status_code == 200
    assert got.json() == verdict.to_dict()
    assert got.json()["notice"].startswith("DEMO MODEL")
    assert missing.status_code == 404


def test_verdict_by_content_hash_with_and_without_model(api):
    cache = VerdictCache.from_settings(api.settings)
    cache.put(make_verdict("h-1", sha="12" * 32, label="real", score=0.1))
    with api.client() as http:
        by_any = http.get("/v1/verdicts", params={"sha256": "12" * 32})
        by_model = http.get("/v1/verdicts", params={"sha256": ("12" * 32).upper(), "model": MODEL.sha256})
        by_prefix = http.get("/v1/verdicts", params={"sha256": "12" * 32, "model": MODEL.sha256[:16]})
        other_model = http.get("/v1/verdicts", params={"sha256": "12" * 32, "model": "ef" * 32})
        not_hex = http.get("/v1/verdicts", params={"sha256": "zz" * 32})
        absent = http.get("/v1/verdicts")
    assert by_any.status_code == by_model.status_code == by_prefix.status_code == 200
    assert by_any.json()["request_id"] == by_model.json()["request_id"] == "h-1"
    assert other_model.status_code == 404
    assert not_hex.status_code == absent.status_code == 422


def test_redis_down_is_503_or_a_miss_never_a_crash(stack):
    from tests.api.conftest import serve
    from worker.localstack import free_port

    nowhere = stack.settings().replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    served, stop = serve(nowhere, run_indexer=False)
    try:
        with served.client() as http:
            codes = {path: http.get(path, params=params).status_code for path, params in [
                ("/v1/verdicts/x", {}), ("/v1/verdicts", {"sha256": "ab" * 32}), ("/review", {}), ("/review/x", {}),
                ("/v1/verdicts/stream", {}), ("/readyz", {}),
            ]}
    finally:
        stop()
    assert codes == {"/v1/verdicts/x": 503, "/v1/verdicts": 503, "/review": 503, "/review/x": 503, "/v1/verdicts/stream": 503, "/readyz": 503}
