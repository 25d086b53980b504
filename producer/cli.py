"""`dfd-producer`: submit videos to scan, wait for or look up verdicts, follow the results topic.

    dfd-producer submit [--file F | -] [--wait] [--timeout S] [--metadata JSON] URI...
    dfd-producer get REQUEST_ID
    dfd-producer get --sha256 HASH [--model-sha256 M]
    dfd-producer tail [--idle-timeout S]

Output is JSON lines on stdout: `{"request_id", "uri"}` per submitted video, or one
verdict per line. Connection settings come from DFD_* variables (`dfd-worker settings`).
Exit codes: 0 done; 1 a verdict was not found or did not arrive in time; 2 wrong usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Iterable, TextIO

from producer.client import ScanClient, new_request_id
from worker.settings import Settings
from worker.types import ScanRequest

EXIT_OK, EXIT_MISSING, EXIT_USAGE = 0, 1, 2


def read_uris(lines: Iterable[str]) -> list[str]:
    """One URI per line; blank lines and # comments are skipped."""
    return [s for line in lines if (s := line.strip()) and not s.startswith("#")]


def _print(doc: dict, out: TextIO) -> None:
    out.write(json.dumps(doc, separators=(",", ":")) + "\n")
    out.flush()


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="dfd-producer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_submit = sub.add_parser("submit", help="publish scan requests")
    p_submit.add_argument("uris", nargs="*", help="paths or URIs (file://, http(s)://); '-' reads them from stdin")
    p_submit.add_argument("--file", "-f", help="read URIs from this file, one per line ('-': stdin)")
    p_submit.add_argument("--wait", action="store_true", help="print each verdict as it arrives")
    p_submit.add_argument("--timeout", type=float, default=300, help="seconds --wait waits for all verdicts")
    p_submit.add_argument("--metadata", default="{}", help="JSON object passed through to every verdict")
    p_get = sub.add_parser("get", help="print a cached verdict")
    p_get.add_argument("request_id", nargs="?", help="request id")
    p_get.add_argument("--sha256", help="look up by the video's content hash instead")
    p_get.add_argument("--model-sha256", help="with --sha256: only verdicts of this model")
    p_tail = sub.add_parser("tail", help="print every verdict in the results topic, then follow it")
    p_tail.add_argument("--idle-timeout", type=float, help="stop after this many seconds without a verdict")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

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
