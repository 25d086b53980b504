"""The documented memory bound: with default settings no single input raises the worker's
peak RSS (its own plus its media children's) above 1.5 GiB.

Run in a fresh process, so the peak (VmHWM) is the scanner's alone and not what the test
session loaded before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.fixtures.hostile_media import hls_playlist, png_header_only, zero_png
from worker.media.encode import encode_clip

BOUND_MIB = 1536

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from worker.pipeline.scanner import Scanner
    from worker.settings import Settings
    from worker.types import DecodedVideo, ScanRequest

    def hwm_kib(pid="self"):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    if __name__ == "__main__":
        bundle, root, names = sys.argv[1], sys.argv[2], sys.argv[3:]
        scanner = Scanner(Settings.from_env({}, model_dir=bundle, allowed_roots=(root,)))
        out = {"codes": {}}
        for name in names:
            loaded = scanner.load(ScanRequest(name, str(Path(root) / name)))
            if isinstance(loaded, DecodedVideo):
                (verdict,) = scanner.analyze([loaded])
                del loaded
            else:
                verdict = loaded
            out["codes"][name] = verdict.error_code or verdict.label
        pids = scanner._media.pids()
        out["parent_mib"] = hwm_kib() / 1024
        out["children_mib"] = [hwm_kib(p) / 1024 for p in pids]
        print("RESULT " + json.dumps(out), flush=True)
    """
)


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory, carphone):
    root = tmp_path_factory.mktemp("hostile")
    png_header_only(root / "png-16000.png", 16000, 16000)
    png_header_only(root / "png-30000.png", 30000, 30000)
    zero_png(root / "png-16000-full", 16000, 16000)  # every row present, no suffix
    zero_png(root / "png-at-limit.png", 3840, 2160)
    gradient = np.tile(np.linspace(0, 255, 3840, dtype=np.uint8)[None, :, None], (2160, 1, 3))
    encode_clip(root / "video-4k.mp4", [np.roll(gradient, 40 * i, axis=1) for i in range(12)], fps=4)
    big = np.zeros((2304, 4096, 3), np.uint8)
    encode_clip(root / "video-over-limit.mkv", [big] * 3, fps=4)
    outside = root.parent / "outside.mp4"
    outside.write_bytes(carphone.read_bytes())
    hls_playlist(root / "playlist.m3u8", outside)
    return root


def test_no_single_input_raises_peak_rss_above_the_bound(untrained_bundle, hostile_dir):
    names = sorted(p.name for p in hostile_dir.iterdir())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env = {k: v for k, v in env.items() if not k.startswith("DFD_")}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(untrained_bundle.path), str(hostile_dir), *names],
        capture_output=True, text=True, env=env, timeout=600,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(line[len("RESULT "):])
    assert result["codes"] == {
        "playlist.m3u8": "unsupported_format",
        "png-16000-full": "too_large",
        "png-16000.png": "too_large",
        "png-30000.png": "too_large",
        "png-at-limit.png": "no_face",
        "video-4k.mp4": "no_face",
        "video-over-limit.mkv": "too_large",
    }
    total = result["parent_mib"] + sum(result["children_mib"])
    print(f"peak RSS: parent {result['parent_mib']:.0f} MiB, children {result['children_mib']} MiB")
    assert total < BOUND_MIB, result
