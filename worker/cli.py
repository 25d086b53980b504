"""`dfd-worker`: scan videos in-process, run the streaming worker or the Redis materializer, inspect settings and models.

Exit codes of `scan`: 0 every input got a verdict (fake, real or no_face); 2 wrong usage or
configuration (a missing or invalid model bundle, a bad setting); 3 at least one input was
bad (unreadable, refused, ...: an `error` verdict says why); 4 internal failure (a stage
crashed, or the models could not be run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from fnmatch import fnmatch
from pathlib import Path
from typing import Iterator

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_INTERNAL = 4

# What a folder given to `scan` contributes: videos PyAV demuxes and the stills the scanner reads.
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".ts", ".mpg", ".mpeg", ".3gp", ".wmv"}
STILL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}

SCAN_EPILOG = """\
Output: one JSON verdict per line on stdout, written as soon as it is ready (so not in input
order); each line's "uri" is the input it answers. Still images (.png, .jpg, .jpeg, .bmp,
.webp) are scanned as one-frame videos. A folder is searched recursively for video and image
files (narrow it with --glob). Progress goes to stderr when stderr is a terminal.

Exit codes: 0 every input got a verdict (fake, real or no_face); 2 wrong usage or
configuration (missing or invalid model bundle, bad setting); 3 at least one input was bad
(an error verdict says why); 4 internal failure."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfd-worker", description=__doc__.splitlines()[0], formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    scan = sub.add_parser(
        "scan", help="scan videos, images or folders in-process; one JSON verdict per line",
        description="Scan videos and still images in this process, without Kafka or Redis.",
        epilog=SCAN_EPILOG, formatter_class=_Formatter,
    )
    scan.add_argument("inputs", nargs="+", metavar="INPUT",
                      help="video or image paths, folders, file://, http:// or https:// URIs; - reads them from stdin, one per line")
    scan.add_argument("--model-dir", help="model bundle folder (default: DFD_MODEL_DIR)")
    scan.add_argument("--glob", help="with folders: only files whose name matches this pattern, e.g. '*.mp4' (default: every video and image suffix)")
    scan.add_argument("--frames", type=int, help="frames sampled per video (default: DFD_FRAMES_PER_VIDEO, 10)")
    scan.add_argument("--aggregation", help="mean, max, topk_mean or confident_mean (default: the bundle's)")
    scan.add_argument("--threshold", type=float, help="decision threshold (default: the bundle's)")
    scan.add_argument("--providers", help="comma-separated: tensorrt, cuda, cpu or auto (default: DFD_PROVIDERS, auto)")
    scan.add_argument("--quiet", "-q", action="store_true", help="no progress line on stderr (default: shown when stderr is a terminal)")

    sub.add_parser("run", help="run the streaming worker (Kafka in, Kafka and Redis out); see `dfd-worker run --help`", add_help=False)
    sub.add_parser("materialize", help="copy the results topic into Redis (its own consumer group); see `dfd-worker materialize --help`", add_help=False)
    settings_p = sub.add_parser("settings", help="print the effective settings as JSON (secrets masked)",
                                description="Print the settings the worker would run with, read from DFD_* variables.")
    settings_p.add_argument("--markdown", action="store_true", help="print the README's configuration table instead (default: JSON)")
    check = sub.add_parser("check", help="load the models and report the execution providers in use",
                           description="Load the model bundle and the face detector, then print the model, "
                           "the execution providers really in use, the threshold and the aggregation as JSON.")
    check.add_argument("--model-dir", help="model bundle folder (default: DFD_MODEL_DIR)")
    check.add_argument("--providers", help="comma-separated: tensorrt, cuda, cpu or auto (default: DFD_PROVIDERS, auto)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["run"], ["scan"], ["check"]) and not _runtime_installed():
        return EXIT_USAGE
    if argv[:1] == ["run"]:
        # The service parses its own flags; imported lazily so `scan` needs no Kafka client set-up.
        from worker.service.runner import main as run_main

        return run_main(argv[1:])
    if argv[:1] == ["materialize"]:
        from worker.service.materializer import main as materialize_main

        return materialize_main(argv[1:])
    args = build_parser().parse_args(argv)

    from worker.logs import configure_logging
    from worker.settings import Settings, markdown_table

    if args.command == "settings" and args.markdown:
        print(markdown_table())
        return EXIT_OK
    try:
        settings = Settings.from_env()
    except (ValueError, TypeError) as exc:
        print(f"dfd-worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    overrides = {}
    if getattr(args, "model_dir", None):
        overrides["model_dir"] = args.model_dir
    if getattr(args, "providers", None):
        overrides["providers"] = tuple(p.strip() for p in args.providers.split(",") if p.strip())
    if getattr(args, "frames", None):
        overrides["frames_per_video"] = args.frames
    if getattr(args, "aggregation", None):
        overrides["aggregation"] = args.aggregation
    if getattr(args, "threshold", None) is not None:
        overrides["threshold"] = args.threshold
    settings = settings.replace(**overrides)
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())

    if args.command == "settings":
        print(json.dumps(settings.redacted(), indent=2, default=list))
        return EXIT_OK
    if args.command == "check":
        scanner, code = _load_scanner(settings)
        if scanner is None:
            return code
        print(json.dumps({"model": scanner.info.to_dict(), "providers": scanner.providers, "threshold": scanner.threshold, "aggregation": scanner.aggregation}))
        return EXIT_OK
    return _scan(settings, args)


def _runtime_installed() -> bool:
    """The ONNX Runtime (the `cpu` or `gpu` extra) is a choice made at install time: a missing
    one is reported at start, before anything else, not at the first model load."""
    try:
        import worker.models.runtime  # noqa: F401  (raises RuntimeMissing with what to install)
    except ImportError as exc:
        print(f"dfd-worker: {exc}", file=sys.stderr)
        return False
    return True


def _load_scanner(settings):
    """(scanner, EXIT_OK), or (None, exit code): a bundle or setting the user can fix is a
    configuration mistake (2); anything else that stops the models from loading is internal (4)."""
    from worker.models.bundle import BundleError
    from worker.pipeline.scanner import Scanner

    try:
        return Scanner(settings), EXIT_OK
    except (BundleError, ValueError, FileNotFoundError) as exc:
        print(f"dfd-worker: cannot load the models: {exc}", file=sys.stderr)
        return None, EXIT_USAGE
    except Exception as exc:
        print(f"dfd-worker: cannot load the models: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None, EXIT_INTERNAL


def expand_inputs(inputs: list[str], pattern: str | None = None) -> Iterator[str]:
    """Paths and URIs as given, folders replaced by the video and image files under them
    (sorted, recursively), `-` by the lines of stdin."""
    for item in inputs:
        if item == "-":
            yield from (s for line in sys.stdin if (s := line.strip()))
            continue
        path = Path(item)
        if "://" in item or not path.is_dir():
            yield item
            continue
        for found in sorted(path.rglob("*")):
            suffix = found.suffix.lower()
            if found.is_file() and suffix in VIDEO_SUFFIXES | STILL_SUFFIXES and (pattern is None or fnmatch(found.name, pattern)):
                yield str(found)


class Progress:
    """One self-updating line on stderr: done, rate, ETA (when the total is known)."""

    def __init__(self, total: int | None, enabled: bool):
        self.total, self.enabled = total, enabled
        self.done, self.bad = 0, 0
        self.t0 = time.monotonic()

    def update(self, bad: bool) -> None:
        self.done += 1
        self.bad += bad
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        rate = self.done / elapsed
        line = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        line += f" scanned, {self.bad} bad, {rate:.2f} videos/s"
        if self.total and rate > 0:
            line += f", ETA {max(0.0, (self.total - self.done) / rate):.0f} s"
        sys.stderr.write("\r\033[K" + line)
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _scan(settings, args) -> int:
    from worker.types import LABEL_ERROR, ScanRequest

    inputs = list(expand_inputs(args.inputs, args.glob))
    if not inputs:
        print("dfd-worker scan: no input (folders held no video or image file)", file=sys.stderr)
        return EXIT_USAGE
    scanner, code = _load_scanner(settings)
    if scanner is None:
        return code
    requests = [ScanRequest(request_id=str(uuid.uuid4()), uri=uri) for uri in inputs]
    # Paths and folders given on the command line are the user's own choice: allow them.
    roots = set()
    for item in list(args.inputs) + inputs:
        if "://" not in item and item != "-":
            p = Path(item).resolve()
            roots.add(str(p if p.is_dir() else p.parent))
    progress = Progress(len(requests), enabled=sys.stderr.isatty() and not args.quiet)
    code = EXIT_OK
    try:
        for verdict in scanner.scan_iter(requests, extra_roots=sorted(roots)):
            print(json.dumps(verdict.to_dict()), flush=True)
            bad = verdict.label == LABEL_ERROR
            progress.update(bad)
            if bad:
                code = max(code, EXIT_INTERNAL if verdict.error_code == "internal_error" else EXIT_BAD_INPUT)
    finally:
        progress.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
