"""`dfd-api`: serve the API and review page, send webhooks, make keys, print the OpenAPI document.

    dfd-api serve                       # the HTTP API + review page (DFD_API_PORT), indexes recent verdicts
    dfd-api webhooks                    # POSTs each verdict with a callback_url to it (own consumer group)
    dfd-api new-key NAME --scopes read,submit   # a fresh key, and the line for DFD_API_KEYS_FILE
    dfd-api openapi                     # the OpenAPI document (docs/openapi.json is this output)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

# structlog, FastAPI and the Redis/Kafka clients are imported where used: --help answers at once


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dfd-api", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the API and the review page")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s; the port is DFD_API_PORT)")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default: %(default)s)")
    sub.add_parser("webhooks", help="deliver verdicts to their callback_url")
    key = sub.add_parser("new-key", help="make an API key")
    key.add_argument("name", help="who the key is for, kept beside its hash in the keys file")
    key.add_argument("--scopes", default="read", help="comma-separated: read, submit (default: %(default)s)")
    sub.add_parser("openapi", help="print the OpenAPI document")
    args = parser.parse_args(argv)
    command = args.command or "serve"

    if command == "new-key":
        return _new_key(args.name, args.scopes)
    if command == "openapi":
        sys.stdout.write(openapi_json())
        return 0
    from worker.logs import configure_logging
    from worker.settings import Settings

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    if command == "webhooks":
        return _webhooks(settings)
    import uvicorn

    if getattr(args, "workers", 1) > 1:
        uvicorn.run("api.cli:app_from_env", factory=True, host=args.host, port=settings.api_port,
                    workers=args.workers, log_level="warning", access_log=False)
    else:
        uvicorn.run(app_from_env(), host=getattr(args, "host", "0.0.0.0"), port=settings.api_port,
                    log_level="warning", access_log=False)
    return 0


def app_from_env():
    from api.app import create_app
    from worker.settings import Settings

    return create_app(Settings.from_env())


def openapi_json() -> str:
    """The document as committed in docs/openapi.json (made without Redis, Kafka or keys)."""
    from api.app import create_app
    from api.keys import KeyStore
    from worker.settings import Settings

    return json.dumps(create_app(Settings(), KeyStore(), run_indexer=False).openapi(), indent=2, sort_keys=True) + "\n"


def _new_key(name: str, scopes: str) -> int:
    from api.keys import SCOPES, hash_key, new_key

    wanted = [s for s in scopes.split(",") if s]
    if not wanted or not set(wanted) <= set(SCOPES) or not name.isprintable() or " " in name:
        print(f"scopes must be from {', '.join(SCOPES)}; the name one word", file=sys.stderr)
        return 2
    key = new_key()
    print(f"key (give it to the client, it is not stored): {key}", file=sys.stderr)
    print(f"{hash_key(key)} {name} {','.join(wanted)}")
    return 0


def _webhooks(settings) -> int:
    from api.webhooks import run_sender

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return run_sender(settings, stop)


if __name__ == "__main__":
    sys.exit(main())
