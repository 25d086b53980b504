"""Near-duplicate reuse: PDQ hashing, the match rule, banks, and the Redis index behind the Scanner.

The index tests talk to the session's private Redis (fixture `stack`), each under its own key
prefix. A "known fake" is made honestly without a trained model: the index is seeded with a
verdict labelled fake for that video's hashes, which is what the index stores of a model's word.
"""

from __future__ import annotations

import json
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
from worker.pipeline import neardup
from worker.pipeline.neardup import Bank, NearDuplicates, hamming, parse_banks, parse_hex, required_frames, video_match
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
    frames, _ = decode_frames(path, scanner.settings)
    nd = scanner.near_duplicates
    verdict = Verdict(request_id=request_id, uri=str(path), label=LABEL_FAKE, score=0.97, model=scanner.info)
    nd.record(verdict, nd.hash(frames), frames)


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
        assert nd["source"] == "index" and nd["request_id"] == "known-fake" and nd["reused"] is True
        assert nd["label"] == "fake" and len(nd["distances"]) == 10 and nd["matched_frames"] >= 5
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
    assert min(faces.values()) == min(index_scanner.settings.crops_per_face, original.frames_with_faces)
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
    frames, _ = decode_frames(footage["crf35"], settings)
    assert other.lookup(other.hash(frames)) is None
    assert first.near_duplicates.lookup(first.near_duplicates.hash(frames)).request_id == "other-model-fake"


# -- banks and the off switch ---------------------------------------------------------------
def test_a_bank_entry_flags_its_matches(untrained_bundle, stack, footage, bikes, tmp_path):
    frames, _ = decode_frames(footage["original"], Settings())
    bank = tmp_path / "known-fakes.txt"
    bank.write_text("".join(neardup.hash_image(f.image)[0].hex() + "\n" for f in frames))
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
    frames, _ = decode_frames(footage["original"], Settings())
    bank = tmp_path / "known-fakes.txt"
    bank.write_text("".join(neardup.hash_image(f.image)[0].hex() + "\n" for f in frames))
    scanner = Scanner(_settings(untrained_bundle, stack.redis_url, neardup_index=False, neardup_banks=(f"viral={bank}",)))
    request = ScanRequest("with-callback", str(footage["crf35"]), callback_url="https://hooks.example.org/dfd")
    (v,) = scanner.scan([request], extra_roots=[str(footage["crf35"].parent)])
    assert v.near_duplicate["reused"] is True and v.callback_url == "https://hooks.example.org/dfd"


def test_off_switch(untrained_bundle, stack, footage, tmp_path):
    on = Scanner(_settings(untrained_bundle, stack.redis_url, threshold=1.0))
    _seed_fake(on, footage["original"], "known-fake-off")
    assert on.near_duplicates.lookup(on.near_duplicates.hash(decode_frames(footage["crf35"], on.settings)[0]))
    off = Scanner(on.settings.replace(neardup_enabled=False))
    assert off.near_duplicates is None
    v = _scan(off, footage["crf35"], "off")
    assert v.near_duplicate is None and _was_scanned(v)


def test_without_redis_the_index_is_off_and_banks_still_work(untrained_bundle, footage, bikes, tmp_path):
    frames, _ = decode_frames(footage["original"], Settings())
    bank = tmp_path / "bank.txt"
    bank.write_text("".join(neardup.hash_image(f.image)[0].hex() + "\n" for f in frames))
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
    frames, _ = decode_frames(footage["original"], settings)
    seeder.record(Verdict(request_id="known-fake", uri="x", label=LABEL_FAKE, score=0.97), seeder.hash(frames), frames)

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
    for key in near.index.chunk_keys(query.tobytes())[:2]:
        near.index.client.sadd(key, "not-an-id")
    ids, _ = near.index.candidates([query.tobytes()])
    assert len(ids) == 5
    monkeypatch.setattr(neardup, "MAX_BUCKET", 4)
    ids, _ = near.index.candidates([query.tobytes()])
    assert len(ids) == 0


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
    assert len(bank.hashes) == 10
    frames, _ = decode_frames(footage["crf35"], Settings())
    near = NearDuplicates(Settings(neardup_enabled=True), [bank], None)
    assert near.lookup(near.hash(frames)).source == "bank:made"
