"""API keys (401 without or with an unknown key, 403 without the scope), rate limits, body limits, CORS."""

from __future__ import annotations

import base64
import time

import httpx

from tests.api.conftest import BOTH_KEY, READ_KEY, SUBMIT_KEY, serve

SCAN = {"schema_version": 1, "uri": "https://cdn.example.com/a.mp4"}


def test_no_key_or_an_unknown_key_is_401_with_a_challenge(api):
    with api.client(key=None) as http:
        none = http.get("/v1/verdicts/x")
        wrong = http.get("/v1/verdicts/x", headers={"Authorization": "Bearer not-a-key"})
        page = http.get("/review")
    for r in (none, wrong, page):
        assert r.status_code == 401
        assert "Basic" in r.headers["www-authenticate"] and "Bearer" in r.headers["www-authenticate"]


def test_without_a_key_file_everything_but_health_is_401(stack):
    from api.keys import KeyStore

    served, stop = serve(stack.settings(), KeyStore(), run_indexer=False)
    try:
        with served.client(BOTH_KEY) as http:
            assert [http.get(p).status_code for p in ("/v1/verdicts/x", "/review", "/healthz")] == [401, 401, 200]
    finally:
        stop()


def test_a_key_without_the_scope_is_403(api):
    with api.client(key=READ_KEY) as http:
        assert http.post("/v1/scans", json=SCAN).status_code == 403
        assert http.get("/v1/verdicts/x").status_code == 404  # read is allowed: just nothing there
    with api.client(key=SUBMIT_KEY) as http:
        assert http.get("/v1/verdicts/x").status_code == 403
        assert http.get("/review").status_code == 403
        assert http.post("/v1/scans", json=SCAN).status_code == 202


def test_keys_are_accepted_in_x_api_key_and_basic_auth(api):
    basic = base64.b64encode(f"anyone:{READ_KEY}".encode()).decode()
    with api.client(key=None) as http:
        assert http.get("/v1/verdicts/x", headers={"X-API-Key": READ_KEY}).status_code == 404
        assert http.get("/v1/verdicts/x", headers={"Authorization": f"Basic {basic}"}).status_code == 404
        assert http.get("/v1/verdicts/x", headers={"Authorization": "Basic %%%"}).status_code == 401


def test_health_needs_no_key(api):
    with api.client(key=None) as http:
        assert http.get("/healthz").status_code == 200
        deadline = time.monotonic() + 20  # the producer connects in the background
        while http.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert http.get("/readyz").status_code == 200
        assert "dfd_api_requests_total" in http.get("/metrics").text


def test_each_key_has_its_own_rate_limit(stack):
    served, stop = serve(stack.settings(api_rate_limit_per_s=0.5, api_rate_burst=3))
    try:
        with served.client(READ_KEY) as reader, served.client(BOTH_KEY) as other:
            codes = [reader.get("/v1/verdicts/x").status_code for _ in range(4)]
            limited = reader.get("/v1/verdicts/x")
            assert other.get("/v1/verdicts/x").status_code == 404  # another key is not limited by it
            metrics = other.get("/metrics").text
    finally:
        stop()
    assert codes == [404, 404, 404, 429]
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "dfd_api_rate_limited_total 2.0" in metrics


def test_bodies_over_the_limit_are_413(stack):
    served, stop = serve(stack.settings(api_max_body_bytes=1000))
    try:
        with served.client(BOTH_KEY) as http:
            big = {**SCAN, "metadata": {"pad": "x" * 2000}}
            declared = http.post("/v1/scans", json=big)

            def chunks():  # no Content-Length: the limit counts bytes as they arrive
                for _ in range(10):
                    yield b"x" * 500

            streamed = http.post("/v1/scans", content=chunks(), headers={"Content-Type": "application/json"})
            small = http.post("/v1/scans", json=SCAN)
    finally:
        stop()
    assert declared.status_code == 413 and streamed.status_code == 413
    assert small.status_code == 202


def test_cors_is_closed_unless_origins_are_named(api, stack):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}
    with api.client(key=None) as http:
        closed = http.options("/v1/verdicts/x", headers=preflight)
        simple = http.get("/v1/verdicts/x", headers={"Origin": "https://evil.example", "X-API-Key": READ_KEY})
    assert "access-control-allow-origin" not in closed.headers
    assert "access-control-allow-origin" not in simple.headers

    served, stop = serve(stack.settings(api_cors_origins=("https://moderation.example",)))
    try:
        with httpx.Client(base_url=served.url) as http:
            allowed = http.options("/v1/verdicts/x", headers={**preflight, "Origin": "https://moderation.example"})
            other = http.options("/v1/verdicts/x", headers=preflight)
    finally:
        stop()
    assert allowed.headers["access-control-allow-origin"] == "https://moderation.example"
    assert "access-control-allow-origin" not in other.headers
