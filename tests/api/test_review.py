"""The review page: recent verdicts from the index with filters and sorting, the detail view, escaping."""

from __future__ import annotations

import re
import time

from api.review import select, timeline
from tests.api.conftest import make_verdict
from tests.api.test_stream import publish
from worker.service.cache import VerdictCache
from worker.types import ModelInfo

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


def rows(html: str) -> list[str]:
    return re.findall(r'<a href="/review/([^"]+)">', html)


def wait_indexed(http, count: int, timeout_s: float = 40) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        html = http.get("/review", params={"since_hours": 0}).text
        if len(rows(html)) >= count:
            return html
        time.sleep(0.3)
    raise AssertionError(f"fewer than {count} verdicts indexed:\n{html[-2000:]}")


def test_list_filters_by_label_and_model_and_sorts_by_score(api):
    other = ModelInfo("other-model", "9", "ef" * 32)
    verdicts = [
        make_verdict("v-low", label="real", score=0.2),
        make_verdict("v-high", score=0.97),
        make_verdict("v-mid", score=0.6, model=other),
        make_verdict("v-none", label="no_face", score=None),
    ]
    cache = VerdictCache.from_settings(api.settings)
    for v in verdicts:
        cache.put(v)
    publish(api.settings, verdicts)
    with api.client() as http:
        wait_indexed(http, 4)
        by_score = rows(http.get("/review", params={"sort": "score_desc"}).text)
        fakes = rows(http.get("/review", params={"label": "fake", "sort": "score_asc"}).text)
        other_model = rows(http.get("/review", params={"model": "other-model 9"}).text)
        bad = http.get("/review", params={"label": "<b>"})
    assert by_score == ["v-high", "v-mid", "v-low", "v-none"]  # scoreless last
    assert fakes == ["v-mid", "v-high"]
    assert other_model == ["v-mid"]
    assert bad.status_code == 422


def test_detail_shows_faces_threshold_model_and_notice(api):
    verdict = make_verdict("d-1")
    verdict.thumbnails = [b"\xff\xd8jpeg-0", b"\xff\xd8jpeg-1"]
    VerdictCache.from_settings(api.settings).put(verdict)
    with api.client() as http:
        page = http.get("/review/d-1")
        thumb = http.get("/v1/verdicts/d-1/faces/1.jpg")
        no_thumb = http.get("/v1/verdicts/d-1/faces/5.jpg")
        missing = http.get("/review/nope")
    html = page.text
    assert page.status_code == 200 and "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert html.count('class="face"') == 2 and html.count('class="thumb"') == 2
    assert "0.950" in html and "0.350" in html and 'id="threshold">0.500' in html
    assert "DEMO MODEL" in html and "convnextv2-atto-dfd 2026.11.1" in html
    assert thumb.status_code == 200 and thumb.content == b"\xff\xd8jpeg-1" and thumb.headers["content-type"] == "image/jpeg"
    assert no_thumb.status_code == 404 and missing.status_code == 404


def test_detail_lists_face_tracks(api):
    tracks = [{"faces": [0], "frames_seen": 6, "score": 0.912, "counted": True},
              {"faces": [1], "frames_seen": 1, "score": 0.35, "counted": False}]
    verdict = make_verdict("t-1", tracks=tracks)
    VerdictCache.from_settings(api.settings).put(verdict)
    with api.client() as http:
        html = http.get("/review/t-1").text
    assert html.count('class="track"') == 2 and "highest of the face tracks' mean" in html
    assert "no (seen in one frame)" in html and "0.912" in html  # read back from the cache


def test_user_controlled_strings_are_escaped(api):
    verdict = make_verdict("x-1", metadata={"title": XSS})
    verdict.uri = "https://cdn.example.com/v.mp4?<script>alert(1)</script>"
    cache = VerdictCache.from_settings(api.settings)
    cache.put(verdict)
    publish(api.settings, [verdict])
    with api.client() as http:
        listing = wait_indexed(http, 1)
        detail = http.get("/review/x-1").text
    for html in (listing, detail):
        assert "<script>" not in html and "<img src=x" not in html
        assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html


def test_select_and_timeline_pure():
    a, b, c = make_verdict("a", score=0.4), make_verdict("b", score=0.9), make_verdict("c", label="error", score=None)
    a.created_at, b.created_at, c.created_at = 3, 2, 1
    assert [v.request_id for v in select([a, b, c], None, None, "newest", 10)] == ["a", "b", "c"]
    assert [v.request_id for v in select([a, b, c], None, None, "score_asc", 2)] == ["a", "b"]
    line = timeline(b)
    assert line["faces"] == [0.0, 100.0] and [f["index"] for f in line["frames"]] == [0, 1]


def test_index_keeps_the_newest_within_the_ttl(stack):
    from api.recent import RecentIndex, recent_key
    from worker.service.messages import encode_verdict

    settings = stack.settings(redis_ttl_s=3600)
    index = RecentIndex(VerdictCache.from_settings(settings), max_entries=3)
    now = time.time()
    verdicts = [make_verdict(f"i-{n}") for n in range(5)]
    for n, v in enumerate(verdicts):
        v.created_at = now - 10 * (5 - n)
    expired = make_verdict("i-old")
    expired.created_at = now - 7200
    assert index.add([encode_verdict(v) for v in [*verdicts, expired]] + [b"not json", b'{"no": "id"}']) == 6
    kept = index.cache.client.zrange(recent_key(settings.redis_key_prefix), 0, -1)
    assert [k.decode() for k in kept] == ["i-2", "i-3", "i-4"]
