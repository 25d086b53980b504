"""API keys and per-key rate limits.

Keys are never stored: the key file (a Kubernetes Secret) holds the SHA-256 of each, one per
line, `<sha256 hex> <name> <scopes>`, scopes comma-separated from `read` and `submit`.
`dfd-api new-key NAME --scopes read,submit` prints a fresh key and the line to store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCOPES = ("read", "submit")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return "dfd_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: frozenset[str]


class KeyStore:
    """Hashed keys by digest; lookups compare digests in constant time."""

    def __init__(self, entries: dict[str, ApiKey] | None = None):
        self._entries = dict(entries or {})

    @classmethod
    def load(cls, path: str | Path | None) -> "KeyStore":
        """Read a key file; a malformed line is an error at start, not a silently missing key."""
        if not path:
            return cls()
        entries: dict[str, ApiKey] = {}
        for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 3 or not _HEX64.match(parts[0].lower()):
                raise ValueError(f"{path}:{number}: expected '<sha256 hex> <name> <scopes>'")
            scopes = frozenset(s for s in parts[2].split(",") if s)
            if not scopes or not scopes <= set(SCOPES):
                raise ValueError(f"{path}:{number}: scopes must be from {', '.join(SCOPES)}")
            entries[parts[0].lower()] = ApiKey(parts[1], scopes)
        return cls(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, key: str) -> ApiKey | None:
        digest = hash_key(key)
        found = None
        for stored, entry in self._entries.items():  # no early exit: timing tells nothing
            if hmac.compare_digest(stored, digest):
                found = entry
        return found


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request presents: `X-API-Key`, `Authorization: Bearer KEY`, or Basic with KEY as password (browsers)."""
    if x_api_key:
        return x_api_key.strip()
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


class RateLimiter:
    """A token bucket per key name: `rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, name: str) -> float:
        """0 if the request may go ahead, else the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(name, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                return 0.0
            self._buckets[name] = (tokens, now)
            return (1.0 - tokens) / self.rate if self.rate > 0 else 60.0
