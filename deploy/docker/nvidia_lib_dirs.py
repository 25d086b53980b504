"""Print the folders that hold the CUDA/cuDNN libraries shipped by NVIDIA's pip wheels.

The GPU image writes this list to /etc/ld.so.conf.d/ so that ONNX Runtime's CUDA provider
finds libcudart, libcublas and libcudnn without LD_LIBRARY_PATH, whatever folder layout the
wheels of a given CUDA release use (nvidia/cu13/lib, nvidia/cudnn/lib, ...).
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path


def nvidia_lib_dirs(site_packages: Path) -> list[str]:
    """Folders under site-packages/nvidia that contain a shared library, sorted."""
    root = site_packages / "nvidia"
    if not root.is_dir():
        return []
    return sorted({str(p.parent) for p in root.rglob("lib*.so*") if p.is_file()})


def main(argv: list[str]) -> int:
    site_packages = Path(argv[1]) if len(argv) > 1 else Path(sysconfig.get_paths()["purelib"])
    dirs = nvidia_lib_dirs(site_packages)
    if not dirs:
        print(f"no NVIDIA libraries under {site_packages / 'nvidia'}", file=sys.stderr)
        return 1
    print("\n".join(dirs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
