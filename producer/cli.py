"""`dfd-producer`: submit videos to scan, wait for or look up verdicts, follow the results topic.

    dfd-producer submit [--file F | -] [--wait] [--timeout S] [--metadata JSON] URI...
    dfd-producer get REQUEST_ID
    dfd-producer get --sha256 HASH [--model-sha256 M]
    dfd-producer tail [--idle-timeout S]

Output is JSON lines on stdout: `{"request_id", "uri"}` per submitted video, or one
verdict per line. Connection settings come from DFD_* variables (`dfd-worker settings`).
Local paths are sent as absolute file:// URIs: the worker reads them itself, so they must
lie under the worker's DFD_ALLOWED_ROOTS (on a shared disk or volume).
Exit codes: 0 done; 1 a verdict was not found or did not arrive in time; 2 wrong usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, TextIO

# Kafka, Redis and numpy are imported where they are used, so `--help` answers at once.

EXIT_OK, EXIT_MISSING, EXIT_USAGE = 0, 1, 2


def read_uris(lines: Iterable[str]) -> list[str]:
    """One URI per line; blank lines and # comments are skipped."""
    return [s for line in lines if (s := line.strip()) and not s.startswith("#")]


def _print(doc: dict, out: TextIO) -> None:
    out.write(json.dumps(doc, separators=(",", ":")) + "\n")
    out.flush()


def to_uri(item: str) -> str:
    """A URI as given; a local path as an absolute file:// URI, since the worker runs elsewhere
    (another folder, host or pod) and a relative path would mean nothing there."""
    if "://" in item:
        return item
    return Path(item).expanduser().resolve().as_uri()


def local_path_notes(uris: list[str], allowed_roots: tuple[str, ...]) -> list[str]:
    """Warnings for file:// URIs the worker will probably refuse, said at submit time."""
    from urllib.parse import unquote, urlparse

    paths = [Path(unquote(urlparse(u).path)) for u in uris if u.startswith("file://")]
    if not paths:
        return []
    notes = [f"{p} does not exist here" for p in paths if not p.exists()]
    roots = [Path(r).expanduser().resolve() for r in allowed_roots]
    outside = [p for p in paths if not any(p == r or r in p.parents for r in roots)]
    if outside:
        where = ", ".join(str(r) for r in roots) if roots else "none set here"
        notes.append(
            f"{len(outside)} local file(s) must lie under the worker's DFD_ALLOWED_ROOTS (here: {where}), "
            f"e.g. start the worker with DFD_ALLOWED_ROOTS={outside[0].parent}"
        )
    return notes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfd-producer", description=__doc__.splitlines()[0],
                                     epilog="\n".join(__doc__.splitlines()[2:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_submit = sub.add_parser("submit", help="publish scan requests (and optionally wait for the verdicts)",
                              description="Publish one scan request per video to the requests topic. Local paths "
                              "become absolute file:// URIs, which the worker reads only under its DFD_ALLOWED_ROOTS.")
    p_submit.add_argument("uris", nargs="*", metavar="URI", help="paths or URIs (file://, http(s)://); '-' reads them from stdin")
    p_submit.add_argument("--file", "-f", help="read URIs from this file, one per line ('-': stdin) (default: none)")
    p_submit.add_argument("--wait", action="store_true", help="print each verdict as it arrives (default: print the request ids and return)")
    p_submit.add_argument("--timeout", type=float, default=300, help="seconds --wait waits for all verdicts (default: %(default)s)")
    p_submit.add_argument("--metadata", default="{}", help="JSON object passed through to every verdict (default: %(default)s)")
    p_get = sub.add_parser("get", help="print a cached verdict from Redis",
                           description="Print the verdict cached in Redis for a request id, or for a video's content "
                           "hash. Exit 1 when none is cached (not done yet, expired, or Redis away).")
    p_get.add_argument("request_id", nargs="?", help="request id (or use --sha256)")
    p_get.add_argument("--sha256", help="look up by the video's content hash instead (default: by request id)")
    p_get.add_argument("--model-sha256", help="with --sha256: only verdicts of this model (default: the newest by any model)")
    p_tail = sub.add_parser("tail", help="print every verdict in the results topic, then follow it",
                            description="Read the results topic from its beginning (every partition, no consumer "
                            "group, so it takes nothing from other readers), print each verdict, then follow new ones.")
    p_tail.add_argument("--idle-timeout", type=float, help="stop after this many seconds without a verdict (default: follow until Ctrl-C)")
    return parser


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from producer.client import ScanClient, new_request_id
    from worker.settings import Settings
    from worker.types import ScanRequest

    try:
        settings = Settings.from_env()
    except (ValueError, TypeError) as exc:
        print(f"dfd-producer: {exc}", file=sys.stderr)
        return EXIT_USAGE

    if args.command == "submit":
        uris = [u for u in args.uris if u != "-"]
        if args.file:
            with (sys.stdin if args.file == "-" else open(args.file)) as fh:
                uris += read_uris(fh)
        if "-" in args.uris:
            uris += read_uris(sys.stdin)
        try:
            metadata = json.loads(args.metadata)
        except json.JSONDecodeError as exc:
            print(f"dfd-producer: --metadata is not JSON: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if not isinstance(metadata, dict):
            print("dfd-producer: --metadata must be a JSON object", file=sys.stderr)
            return EXIT_USAGE
        if not uris:
            print("dfd-producer: nothing to submit (give URIs, --file, or -)", file=sys.stderr)
            return EXIT_USAGE
        uris = [to_uri(u) for u in uris]
        for note in local_path_notes(uris, settings.allowed_roots):
            print(f"dfd-producer: note: {note}", file=sys.stderr)
        requests = [ScanRequest(new_request_id(), uri, None, dict(metadata)) for uri in uris]
        with ScanClient(settings) as client:
            ids = client.submit(requests)
            if not args.wait:
                for r in requests:
                    _print({"request_id": r.request_id, "uri": r.uri}, out)
                return EXIT_OK
            seen = set()
            for verdict in client.wait(ids, timeout_s=args.timeout):
                seen.add(verdict.request_id)
                _print(verdict.to_dict(), out)
            missing = [i for i in ids if i not in seen]
            for rid in missing:
                print(f"dfd-producer: no verdict for {rid} after {args.timeout} s", file=sys.stderr)
            return EXIT_MISSING if missing else EXIT_OK

    if args.command == "get":
        if bool(args.request_id) == bool(args.sha256):
            print("dfd-producer get: give a request id or --sha256, not both", file=sys.stderr)
            return EXIT_USAGE
        with ScanClient(settings) as client:
            verdict = client.get_by_hash(args.sha256, args.model_sha256) if args.sha256 else client.get(args.request_id)
        if verdict is None:
            print("dfd-producer: no cached verdict", file=sys.stderr)
            return EXIT_MISSING
        _print(verdict.to_dict(), out)
        return EXIT_OK

    with ScanClient(settings) as client:
        try:
            for verdict in client.tail(idle_timeout_s=args.idle_timeout):
                _print(verdict.to_dict(), out)
        except KeyboardInterrupt:
            pass
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
