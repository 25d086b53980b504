"""The dfd-api ASGI application: verdict lookups, scan submission, the verdict stream, health.

`create_app(settings)` builds it; `dfd-api serve` runs it on uvicorn. Verdicts are read from
the worker's Redis cache (`worker.service.cache`), requests are validated by the worker's own
`parse_request` and published to the requests topic with `producer.client.ScanClient`.
"""


import asyncio
import json
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator

import redis
import redis.asyncio
import structlog
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from api import metrics
from api.keys import ApiKey, KeyStore, RateLimiter, key_from_headers
from api.middleware import BodyLimit, RequestMetrics
from api.recent import RecentIndex, channel
from api.results import start_thread
from kafka import KafkaProducer

from producer.client import ScanClient
from worker.service.kafka_clients import make_producer
from worker.service.cache import connect
from worker.service.messages import Rejected, encode_request, parse_request
from worker.settings import Settings
from worker.types import LABELS, ScanRequest

log = structlog.get_logger(__name__)

SSE_KEEPALIVE_S = 15.0
WAIT_POLL_S = 0.1
_SHA256 = r"^[0-9a-fA-F]{64}$"
_MODEL = r"^[0-9a-fA-F]{16,64}$"


class Services:
    """What the routes use, made once per app: the cache (through ScanClient), the producer, the index."""

    def __init__(self, settings: Settings, keys: KeyStore, run_indexer: bool):
        self.settings = settings
        self.keys = keys
        self.limiter = RateLimiter(settings.api_rate_limit_per_s, settings.api_rate_burst)
        self.client = ScanClient(settings)
        self.cache = self.client.cache
        self.index = RecentIndex(self.cache, settings.api_recent_max)
        self.aredis = connect(settings, redis.asyncio.Redis, socket_timeout=None)
        self.run_indexer = run_indexer
        self.stop = threading.Event()
        self._producer_lock = threading.Lock()
        self._producer: KafkaProducer | None = None

    def start(self) -> None:
        threading.Thread(target=self._connect_producer, name="kafka-producer", daemon=True).start()
        if self.run_indexer:
            start_thread(self.settings, f"{self.settings.api_group_id}-index", self._index, self.stop)

    def _index(self, records: list) -> None:
        metrics.INDEXED.inc(self.index.add(r.value for r in records if r.value is not None))

    def _connect_producer(self) -> None:
        """Make the producer in the background: KafkaProducer blocks ~30 s when no broker answers,
        which no HTTP request should wait for; until it exists, submissions get 503."""
        while not self.stop.is_set():
            try:
                # sends wait at most 5 s for topic metadata, so a lost broker is a quick 503
                producer = make_producer(self.settings, max_block_ms=5000)
            except Exception as exc:
                log.warning("broker_unreachable", error=f"{type(exc).__name__}: {exc}")
                self.stop.wait(5.0)
                continue
            with self._producer_lock:
                self._producer = producer
            return

    @property
    def producer(self) -> KafkaProducer | None:
        with self._producer_lock:
            return self._producer

    def publish(self, request: ScanRequest) -> None:
        producer = self.producer
        if producer is None:
            raise ConnectionError("not connected to the broker yet")
        producer.send(self.settings.requests_topic, key=request.request_id.encode(), value=encode_request(request)).get(timeout=15)

    def broker_ready(self) -> bool:
        """The requests topic's partitions are known (a metadata answer from the broker)."""
        producer = self.producer
        try:
            return producer is not None and bool(producer.partitions_for(self.settings.requests_topic))
        except Exception:  # metadata did not come
            return False

    async def close(self) -> None:
        self.stop.set()
        await self.aredis.aclose()
        await run_in_threadpool(self._close_clients)

    def _close_clients(self) -> None:
        if self.producer is not None:
            self.producer.close(timeout=5)
        self.client.close()


def create_app(settings: Settings, keys: KeyStore | None = None, *, run_indexer: bool = True) -> FastAPI:
    if keys is None:
        keys = KeyStore.load(settings.api_keys_file)
        if not len(keys):
            log.warning("no_api_keys", detail="DFD_API_KEYS_FILE names no keys: every /v1 call is answered 401")
    services = Services(settings, keys, run_indexer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.start()
        yield
        await services.close()

    app = FastAPI(
        title="dfd-api",
        version="1",
        summary="Verdicts of the deepfake-stream detector: look them up, submit videos, follow new ones.",
        description=(
            "Authenticate with an API key: `Authorization: Bearer KEY` or `X-API-Key: KEY` "
            "(browsers: HTTP Basic with the key as password). Scopes: `read`, `submit`. See docs/api.md."
        ),
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load scripts from CDNs: the document is at /openapi.json
        redoc_url=None,
    )
    app.state.services = services

    @app.exception_handler(redis.RedisError)
    async def redis_unavailable(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("redis_unavailable", path=request.url.path, error=str(exc))
        return JSONResponse({"detail": "the verdict cache is unavailable; try again"}, status_code=503)

    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    if settings.api_cors_origins:  # closed unless origins are named
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.api_cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.add_middleware(RequestMetrics)

    def require(scope: str):
        # async: a sync dependency would cost every request a hop through the thread pool
        async def check(request: Request) -> ApiKey:
            presented = key_from_headers(request.headers.get("authorization"), request.headers.get("x-api-key"))
            # Basic first: browsers answer the first scheme they know (the review page); API clients send Bearer
            challenge = {"WWW-Authenticate": 'Basic realm="dfd-api", charset="UTF-8", Bearer realm="dfd-api"'}
            if presented is None:
                metrics.AUTH_FAILURES.labels("missing_key").inc()
                raise HTTPException(401, "an API key is required", headers=challenge)
            key = services.keys.find(presented)
            if key is None:
                metrics.AUTH_FAILURES.labels("unknown_key").inc()
                raise HTTPException(401, "unknown API key", headers=challenge)
            if scope not in key.scopes:
                metrics.AUTH_FAILURES.labels("scope").inc()
                raise HTTPException(403, f"this key lacks the {scope!r} scope")
            wait_s = services.limiter.take(key.name)
            if wait_s > 0:
                metrics.RATE_LIMITED.inc()
                raise HTTPException(429, "rate limit exceeded", headers={"Retry-After": str(max(1, round(wait_s + 0.5)))})
            return key

        return check

    app.state.require = require
    reader = Depends(require("read"))
    submitter = Depends(require("submit"))

    # -- health ------------------------------------------------------------------------------
    @app.get("/healthz", response_class=PlainTextResponse, tags=["health"])
    async def healthz() -> str:
        """Liveness: the process answers."""
        return "ok\n"

    @app.get("/readyz", response_class=PlainTextResponse, tags=["health"], responses={503: {"description": "not ready"}})
    def readyz() -> Response:
        """Readiness: Redis answers a ping and the broker answers for the requests topic."""
        redis_ok = services.cache.ping()
        broker_ok = services.broker_ready()
        body = f"redis={redis_ok} broker={broker_ok}\n"
        return PlainTextResponse(body, status_code=200 if redis_ok and broker_ok else 503)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # -- verdicts ----------------------------------------------------------------------------
    @app.get("/v1/verdicts/stream", tags=["verdicts"], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events, one `verdict` event per new verdict"}})
    async def stream(
        request: Request,
        _: Annotated[ApiKey, reader],
        label: Annotated[list[str] | None, Query(description=f"only these labels ({', '.join(LABELS)}); repeatable")] = None,
    ) -> StreamingResponse:
        """New verdicts as server-sent events (`event: verdict`, `data: <verdict JSON>`), as dfd-api indexes them."""
        wanted = set(label or ())
        unknown = wanted - set(LABELS)
        if unknown:
            raise HTTPException(422, f"unknown label(s): {', '.join(sorted(unknown))}")
        pubsub = services.aredis.pubsub()
        await pubsub.subscribe(channel(settings.redis_key_prefix))
        return StreamingResponse(
            _events(pubsub, wanted), media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/v1/verdicts/{request_id}", tags=["verdicts"], response_class=Response,
             responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}, "description": "the verdict (docs/streaming.md)"},
                        404: {"description": "no verdict (yet, or expired)"}, 503: {"description": "Redis is unavailable"}})
    async def verdict_by_id(request_id: Annotated[str, Path(max_length=256)], _: Annotated[ApiKey, reader]) -> Response:
        """The cached verdict of a request."""
        # the bytes the worker stored (its encode_verdict): decoding and re-encoding cost more than the lookup
        body = await run_in_threadpool(services.cache.get_json, request_id)
        if body is None and services.cache.in_outage():
            raise HTTPException(503, "the verdict cache is unavailable; try again")
        if body is None:
            raise HTTPException(404, "no verdict for this request id (not done yet, expired, or unknown)")
        return Response(body, media_type="application/json")

    @app.get("/v1/verdicts", tags=["verdicts"], responses={404: {"description": "no verdict for this content"}})
    def verdict_by_content(
        _: Annotated[ApiKey, reader],
        sha256: Annotated[str, Query(pattern=_SHA256, description="content SHA-256 of the video")],
        model: Annotated[str | None, Query(pattern=_MODEL, description="model SHA-256 (or its first 16+ hex digits); default: the newest verdict by any model")] = None,
    ) -> dict[str, Any]:
        """The cached verdict for a video's content, by one model or the newest by any."""
        try:
            verdict = services.client.get_by_hash(sha256.lower(), model.lower() if model else None)
        except redis.RedisError as exc:
            raise HTTPException(503, "the verdict cache is unavailable") from exc
        if verdict is None:
            raise HTTPException(404, "no verdict for this content")
        return verdict.to_dict()

    @app.get("/v1/verdicts/{request_id}/faces/{index}.jpg", tags=["verdicts"],
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "no thumbnail"}}, response_class=Response)
    def face_thumbnail(
        request_id: Annotated[str, Path(max_length=256)],
        index: Annotated[int, Path(ge=0, le=10000)],
        _: Annotated[ApiKey, reader],
    ) -> Response:
        """The 96 px JPEG crop of a verdict's face `index` (stored by workers with DFD_STORE_THUMBNAILS)."""
        jpeg = services.cache.thumbnail(request_id, index)
        if not jpeg:
            raise HTTPException(404, "no thumbnail for this face")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    # -- submitting --------------------------------------------------------------------------
    @app.post(
        "/v1/scans", tags=["scans"], status_code=202,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": SCAN_REQUEST_SCHEMA}}}},
        responses={200: {"description": "the verdict, when it came within `wait` seconds"},
                   413: {"description": "body too large"}, 422: {"description": "invalid request (code and reason)"},
                   503: {"description": "the broker did not accept the request"}},
    )
    async def submit(
        request: Request,
        _: Annotated[ApiKey, submitter],
        wait: Annotated[float, Query(ge=0, description="seconds to wait for the verdict (long poll)")] = 0,
    ) -> JSONResponse:
        """Validate a scan request exactly as the worker does, publish it; 202 with its id (or 200 with the verdict)."""
        body = await request.body()
        parsed = parse_request(_with_request_id(body), settings.max_message_bytes)
        if not isinstance(parsed, Rejected) and not _encodable(parsed.request_id):
            parsed = Rejected("invalid", "request_id must be valid Unicode (no lone surrogates)")
        if isinstance(parsed, Rejected):
            metrics.SCANS_REJECTED.labels(parsed.code).inc()
            return JSONResponse({"detail": parsed.reason, "code": parsed.code}, status_code=413 if parsed.code == "oversized" else 422)
        try:
            await run_in_threadpool(services.publish, parsed)
        except Exception as exc:
            log.warning("publish_failed", request_id=parsed.request_id, error=str(exc))
            raise HTTPException(503, "the broker did not accept the request; try again") from exc
        metrics.SCANS_SUBMITTED.inc()
        accepted = {"request_id": parsed.request_id, "status_url": f"/v1/verdicts/{parsed.request_id}"}
        deadline = time.monotonic() + min(wait, settings.api_max_wait_s)
        while time.monotonic() < deadline:
            verdict = await run_in_threadpool(services.cache.get, parsed.request_id)
            if verdict is not None:
                return JSONResponse(verdict.to_dict(), status_code=200)
            await asyncio.sleep(WAIT_POLL_S)
        return JSONResponse(accepted, status_code=202)

    from api.review import install as install_review

    install_review(app, services, reader)
    app.openapi = lambda: _openapi_with_security(app)
    return app


def _openapi_with_security(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the API-key schemes, required on every /v1 and /review operation."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes)
        doc.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "basic": {"type": "http", "scheme": "basic", "description": "for browsers: any user name, the key as password"},
        }
        for path, operations in doc["paths"].items():
            if path.startswith(("/v1/", "/review")):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}, {"apiKey": []}, {"basic": []}]
                    operation.setdefault("responses", {}).update({
                        "401": {"description": "no key, or an unknown one"},
                        "403": {"description": "the key lacks the scope"},
                        "429": {"description": "the key is over its rate limit (Retry-After says when to retry)"},
                    })
        app.openapi_schema = doc
    return app.openapi_schema


def _encodable(text: str) -> bool:
    """JSON may carry lone surrogates ("\\ud800"): such an id cannot become a Kafka key or a Redis key."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _with_request_id(body: bytes) -> bytes:
    """A JSON object without `request_id` gets a fresh one; everything else goes to parse_request as it came."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return body
    if isinstance(doc, dict) and "request_id" not in doc:
        doc["request_id"] = uuid.uuid4().hex
        return json.dumps(doc).encode("utf-8")
    return body


async def _events(pubsub, wanted: set[str]) -> AsyncIterator[bytes]:
    try:
        yield b"retry: 3000\n\n"
        last = time.monotonic()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                if time.monotonic() - last > SSE_KEEPALIVE_S:
                    last = time.monotonic()
                    yield b": keep-alive\n\n"
                continue
            data: bytes = message["data"]
            if wanted:
                try:
                    if json.loads(data).get("label") not in wanted:
                        continue
                except (ValueError, AttributeError):
                    continue
            last = time.monotonic()
            # verdict JSON is one line (compact encoding), so one data: line carries it
            yield b"event: verdict\ndata: " + data.replace(b"\n", b"") + b"\n\n"
    finally:
        await pubsub.aclose()


SCAN_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A scan request: the requests topic's schema (docs/streaming.md); `request_id` is made when absent.",
    "required": ["schema_version", "uri"],
    "properties": {
        "schema_version": {"type": "integer", "enum": [1]},
        "request_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "uri": {"type": "string", "minLength": 1, "maxLength": 8192, "description": "http(s)://, file:// or a path under the worker's allowed roots"},
        "sha256": {"type": ["string", "null"], "pattern": _SHA256},
        "metadata": {"type": ["object", "null"], "description": "copied unchanged into the verdict"},
        "callback_url": {"type": ["string", "null"], "maxLength": 2048, "description": "http(s) URL the verdict is POSTed to, signed (docs/api.md)"},
    },
}
