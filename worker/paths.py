"""Where built things live: models, clips and state are built into a cache, never the repo."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/deepfake-stream`, or `~/.cache/deepfake-stream`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "deepfake-stream")
