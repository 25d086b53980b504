"""The review page in a real browser: Debian's Chromium driven by npm's playwright-core.

Load the list, open a verdict, see its faces, thumbnails and scores, and try an XSS payload
in metadata (it must show as text and never run). Screenshots go to the test's tmp dir.
Chromium and playwright-core are installed here when missing (apt-get, npm into the cache);
the test skips, saying why, only where that cannot be done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.api.conftest import READ_KEY, make_verdict
from tests.api.test_review import XSS, wait_indexed
from tests.api.test_stream import publish
from worker.paths import cache_dir
from worker.pipeline.scanner import thumbnail_jpegs
from worker.service.cache import VerdictCache

SCRIPT = Path(__file__).parent / "browser" / "review.mjs"
PLAYWRIGHT_VERSION = "1.65.1"


def _install_browser() -> tuple[str, Path]:
    """(chromium path, node_modules folder with playwright-core), installing what is missing."""
    missing = [pkg for pkg, exe in (("chromium", "chromium"), ("nodejs", "node"), ("npm", "npm")) if not shutil.which(exe)]
    if missing:
        if not (shutil.which("apt-get") and os.geteuid() == 0):
            pytest.skip(f"{', '.join(missing)} missing and apt-get is not usable here (not root)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = subprocess.run(["apt-get", "install", "-y", "-q", *missing], capture_output=True, text=True, env=env)
        if done.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
            done = subprocess.run(["apt-get", "install", "-y", "-q", *missing], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            pytest.skip(f"apt-get install {' '.join(missing)} failed: {done.stderr[-500:]}")
    prefix = cache_dir() / "playwright-core"
    modules = prefix / "node_modules"
    if not (modules / "playwright-core" / "package.json").exists():
        prefix.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                               f"playwright-core@{PLAYWRIGHT_VERSION}"], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"npm install playwright-core failed: {done.stderr[-500:]}")
    return shutil.which("chromium"), modules


def test_review_page_in_chromium(api, tmp_path):
    chromium, modules = _install_browser()
    rng = np.random.default_rng(0)
    shown = make_verdict("b-1", metadata={"source": "upload"})
    shown.thumbnails = thumbnail_jpegs(rng.integers(0, 255, (2, 128, 128, 3), dtype=np.uint8))
    hostile = make_verdict("b-xss", label="real", score=0.2, metadata={"title": XSS})
    cache = VerdictCache.from_settings(api.settings)
    for v in (shown, hostile):
        cache.put(v)
    publish(api.settings, [shown, hostile])
    with api.client() as http:
        wait_indexed(http, 2)

    env = {**os.environ, "NODE_PATH": str(modules), "CHROMIUM": chromium}
    run = subprocess.run(["node", str(SCRIPT), api.url, READ_KEY, "b-1", "b-xss", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])

    assert out["anonymousStatus"] == 401
    assert out["listRows"] == 2 and out["listIds"] == ["b-1", "b-xss"]  # sorted by score, highest first
    assert out["detailUrl"].endswith("/review/b-1")
    assert out["label"] == "fake" and out["threshold"] == "0.500" and "DEMO MODEL" in out["notice"]
    assert out["faces"] == 2 and out["faceScores"] == ["0.950", "0.350"] and out["timelineMarks"] == 2
    assert out["thumbWidths"] == [96, 96]
    assert out["xssExecuted"] is False and out["dialogs"] == [] and out["injectedElements"] == 0
    assert "<script>window.__xss=1</script>" in out["xssShownAsText"]  # shown as text, so it was escaped
    for name in ("review-list.png", "review-detail.png", "review-xss.png"):
        assert (tmp_path / name).stat().st_size > 1000
