"""How fast each console script answers `--help`, as a ratio to a bare `python -c pass`.

Commands must start fast: heavy modules (Kafka, Redis, ONNX Runtime, torch, PyAV) are
imported only where they are used. Each command is timed best-of-N, interleaved with the
baseline so both see the same machine load.

    python -m benchmarks.startup [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _time(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per command; the best is kept (default: %(default)s)")
    args = parser.parse_args(argv)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    baseline_cmd = [sys.executable, "-c", "pass"]
    best = {name: float("inf") for name in scripts}
    base = float("inf")
    for _ in range(args.repeat):
        base = min(base, _time(baseline_cmd))
        for name, entry in scripts.items():
            module, func = entry.split(":")
            cmd = [sys.executable, "-c", f"import sys; from {module} import {func} as m; sys.argv[0] = {name!r}; m(['--help'])"]
            try:
                best[name] = min(best[name], _time(cmd))
            except subprocess.CalledProcessError:  # argparse exits 0 on --help; anything else is a failure
                best[name] = float("nan")
    print(f"baseline `python -c pass`: {base * 1000:.0f} ms (best of {args.repeat})")
    rows = {name: {"ms": round(t * 1000), "ratio": round(t / base, 2)} for name, t in best.items()}
    for name, row in rows.items():
        print(f"{name + ' --help':<24} {row['ms']:>6} ms  {row['ratio']:>5}x python -c pass")
    print(json.dumps({"baseline_ms": round(base * 1000), "commands": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
