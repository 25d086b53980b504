"""`dfd-worker`: scan videos in-process, run the streaming worker, inspect settings and models.

Exit codes of `scan`: 0 every input got a verdict (fake, real or no_face); 3 at least one
input was bad (unreadable, refused, ...: an `error` verdict says why); 4 internal failure
(the models could not be loaded, or a stage crashed); 2 wrong usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_INTERNAL = 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dfd-worker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    scan = sub.add_parser("scan", help="scan videos (paths or URIs) and print one JSON verdict per line")
    scan.add_argument("inputs", nargs="+", help="video paths, file://, http:// or https:// URIs (or - to read them from stdin)")
    scan.add_argument("--model-dir", help="model bundle folder (default: DFD_MODEL_DIR)")
    scan.add_argument("--frames", type=int, help="frames sampled per video (default: DFD_FRAMES_PER_VIDEO)")
    scan.add_argument("--aggregation", help="mean, max, topk_mean or confident_mean (default: the bundle's)")
    scan.add_argument("--threshold", type=float, help="decision threshold (default: the bundle's)")
    scan.add_argument("--providers", help="comma-separated: tensorrt, cuda, cpu or auto")

    sub.add_parser("run", help="run the streaming worker (Kafka in, Kafka and Redis out)", add_help=False)
    settings_p = sub.add_parser("settings", help="print the effective settings (secrets masked)")
    settings_p.add_argument("--markdown", action="store_true", help="print the README's configuration table")
    check = sub.add_parser("check", help="load the models and report the execution providers in use")
    check.add_argument("--model-dir", help="model bundle folder (default: DFD_MODEL_DIR)")
    check.add_argument("--providers", help="comma-separated: tensorrt, cuda, cpu or auto")

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["run"], ["scan"], ["check"]) and not _runtime_installed():
        return EXIT_USAGE
    if argv[:1] == ["run"]:
        # The service parses its own flags; imported lazily so `scan` needs no Kafka client set-up.
        from worker.service.runner import main as run_main

        return run_main(argv[1:])
    args = parser.parse_args(argv)

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
    configure_logging(settings.log_level, settings.log_format)

    if args.command == "settings":
        print(json.dumps(settings.redacted(), indent=2, default=list))
        return EXIT_OK
    if args.command == "check":
        return _check(settings)
    return _scan(settings, args.inputs)


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
    from worker.pipeline.scanner import Scanner

    try:
        return Scanner(settings)
    except Exception as exc:  # a missing/corrupt bundle or detector is not the input's fault
        print(f"dfd-worker: cannot load the models: {exc}", file=sys.stderr)
        return None


def _check(settings) -> int:
    scanner = _load_scanner(settings)
    if scanner is None:
        return EXIT_INTERNAL
    print(json.dumps({"model": scanner.info.to_dict(), "providers": scanner.providers, "threshold": scanner.threshold, "aggregation": scanner.aggregation}))
    return EXIT_OK


def _scan(settings, inputs: list[str]) -> int:
    from worker.types import LABEL_ERROR, ScanRequest

    if inputs == ["-"]:
        inputs = [line.strip() for line in sys.stdin if line.strip()]
    scanner = _load_scanner(settings)
    if scanner is None:
        return EXIT_INTERNAL
    requests = [ScanRequest(request_id=str(uuid.uuid4()), uri=uri) for uri in inputs]
    # Paths given on the command line are the user's own choice: allow their folders.
    extra_roots = sorted({str(Path(u).resolve().parent) for u in inputs if "://" not in u})
    code = EXIT_OK
    for verdict in scanner.scan(requests, extra_roots=extra_roots):
        print(json.dumps(verdict.to_dict()), flush=True)
        if verdict.label == LABEL_ERROR:
            code = max(code, EXIT_INTERNAL if verdict.error_code == "internal_error" else EXIT_BAD_INPUT)
    return code


if __name__ == "__main__":
    sys.exit(main())
