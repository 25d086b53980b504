"""The README's streaming example runs as written on the local stack (only the model folder is
swapped for the test bundle, since the demo bundle takes minutes to build)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- streaming-example:"

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    after = text[text.index(marker):]
    return re.search(r"```sh\n(.*?)```", after, re.S).group(1)


def test_streaming_example_runs_as_written(untrained_bundle, carphone, tmp_path):
    script = readme_block(MARKER)
    script, n = re.subn(r"(export DFD_MODEL_DIR=)\S+", rf"\g<1>{untrained_bundle.path}", script)
    assert n == 1, "the example no longer sets DFD_MODEL_DIR"
    work = tmp_path / "videos"
    work.mkdir()
    shutil.copy(carphone, work / "clip.mp4")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFD_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO),
        XDG_CACHE_HOME=str(tmp_path / "cache"),  # the stack's state file, away from a running one
    )
    out = subprocess.run(["bash", "-e", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=400)
    log = (work / "worker.log").read_text(errors="replace")[-2000:] if (work / "worker.log").exists() else ""
    assert out.returncode == 0, f"{out.stderr}\n--- worker.log ---\n{log}"
    verdicts = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(verdicts) == 1, out.stdout
    assert verdicts[0]["uri"] == (work / "clip.mp4").as_uri()
    assert verdicts[0]["label"] in ("fake", "real"), verdicts[0]
