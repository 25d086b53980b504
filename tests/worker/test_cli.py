"""`dfd-worker scan` as a user runs it: folders, stdin, answers as they come, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _popen(*args, env_extra=None, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFD_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-m", "worker.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _run(*args, stdin=None, env_extra=None):
    proc = _popen(*args, env_extra=env_extra, stdin=subprocess.PIPE)
    out, err = proc.communicate(stdin, timeout=300)
    return proc.returncode, [json.loads(line) for line in out.splitlines()], err


@pytest.fixture
def folder(tmp_path, carphone, astronaut):
    """A tree with videos, a still, a non-media file and a nested folder."""
    (tmp_path / "nested").mkdir()
    shutil.copy(carphone, tmp_path / "a.mp4")
    shutil.copy(astronaut, tmp_path / "nested" / "photo.png")
    (tmp_path / "nested" / "b.MP4").write_bytes(carphone.read_bytes()[:4000])  # truncated, upper-case suffix
    (tmp_path / "notes.txt").write_text("not media")
    return tmp_path


def test_a_folder_is_scanned_recursively_for_videos_and_images(untrained_bundle, folder):
    code, lines, err = _run("scan", "--model-dir", str(untrained_bundle.path), "--quiet", str(folder))
    assert sorted(Path(v["uri"]).name for v in lines) == ["a.mp4", "b.MP4", "photo.png"], err
    assert code in (0, 3)
    assert code == (3 if any(v["label"] == "error" for v in lines) else 0)


def test_glob_narrows_a_folder_and_stdin_lists_inputs(untrained_bundle, folder):
    code, lines, err = _run("scan", "--model-dir", str(untrained_bundle.path), "--glob", "*.png", str(folder))
    assert [Path(v["uri"]).name for v in lines] == ["photo.png"], err
    assert code == 0 and lines[0]["label"] in ("fake", "real")

    code, lines, err = _run("scan", "--model-dir", str(untrained_bundle.path), "-", stdin=f"{folder / 'a.mp4'}\n\n")
    assert [Path(v["uri"]).name for v in lines] == ["a.mp4"] and code == 0, err


def test_an_empty_folder_and_a_missing_bundle_are_usage_errors(untrained_bundle, tmp_path, carphone):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, lines, err = _run("scan", "--model-dir", str(untrained_bundle.path), str(empty))
    assert code == 2 and lines == [] and "no input" in err
    code, _, err = _run("scan", str(carphone))  # no --model-dir, no DFD_MODEL_DIR
    assert code == 2 and "DFD_MODEL_DIR" in err
    not_a_bundle = tmp_path / "not-a-bundle"
    not_a_bundle.mkdir()
    code, _, err = _run("scan", "--model-dir", str(not_a_bundle), str(carphone))
    assert code == 2 and "manifest.json" in err


def test_each_verdict_is_written_as_soon_as_it_is_ready(untrained_bundle, carphone):
    """A slow download first, a local clip second: the clip's line comes out while the
    download is still held open by the server, which lets go only after the test saw it."""
    release = threading.Event()
    body = carphone.read_bytes()

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            release.wait(120)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        slow = f"http://127.0.0.1:{httpd.server_address[1]}/slow.mp4"
        proc = _popen("scan", "--model-dir", str(untrained_bundle.path), slow, str(carphone),
                      env_extra={"DFD_HTTP_ALLOW_PRIVATE": "true"})
        first = json.loads(proc.stdout.readline())
        assert first["uri"] == str(carphone) and first["label"] in ("fake", "real")
        assert proc.poll() is None  # still waiting for the slow one
        release.set()
        second = json.loads(proc.stdout.readline())
        assert second["uri"] == slow and second["label"] in ("fake", "real")
        assert proc.wait(60) == 0
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_goes_to_a_terminal_stderr_unless_quiet(untrained_bundle, carphone, quiet):
    import pty

    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFD_")}
    env["PYTHONPATH"] = str(REPO)
    args = [sys.executable, "-m", "worker.cli", "scan", "--model-dir", str(untrained_bundle.path), str(carphone), str(carphone)]
    proc = subprocess.Popen(args + (["--quiet"] if quiet else []), env=env, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    out, _ = proc.communicate(timeout=300)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.returncode == 0 and len(out.splitlines()) == 2
    if quiet:
        assert b"videos/s" not in seen
    else:
        assert b"2/2 scanned" in seen and b"videos/s" in seen and b"ETA" in seen
