"""Get a video's bytes into a local file: allowed local paths, file:// and guarded http(s)://.

Local files are read in place, only from configured root folders (after resolving symlinks
and '..'). HTTP(S) downloads go to a temporary file, capped in size and time, following a
limited number of redirects; every hop's host is resolved once, refused when it is not a
public address (SSRF guard), and then connected to by that vetted IP, so a DNS answer that
changes between the check and the connection (rebinding) cannot redirect the request.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import re
import socket
import ssl
import tempfile
import time
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import url2pathname

from worker.settings import Settings
from worker.types import ScanError, ScanRequest

_CHUNK = 1 << 20
_REDIRECTS = {301, 302, 303, 307, 308}
_USER_AGENT = "deepfake-stream/0.1"
# NUL and other C0/DEL control characters have no business in a path or URI: refused up front
# (os calls raise ValueError on NUL, http.client on any of them, as a crash, not an answer).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOT_IN_HTTP_URL = re.compile(r"[\x00-\x20\x7f]")  # http.client's own rule: spaces too


class FetchedVideo:
    """A local file to decode; a downloaded one is deleted on close."""

    def __init__(self, path: Path, sha256: str, size: int, temporary: bool = False):
        self.path = path
        self.sha256 = sha256
        self.size = size
        self._temporary = temporary

    def close(self) -> None:
        if self._temporary:
            self.path.unlink(missing_ok=True)
            self._temporary = False

    def __enter__(self) -> "FetchedVideo":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FetchedVideo({str(self.path)!r}, size={self.size}, sha256={self.sha256[:12]}...)"


def fetch(request: ScanRequest, settings: Settings, extra_roots: Sequence[str] = ()) -> FetchedVideo:
    """The video `request.uri` names, as a local file whose content hash is known.

    Raises ScanError: `source_refused`, `source_not_found`, `source_too_large`, `http_error`,
    `http_timeout`, `too_many_redirects`, `checksum_mismatch` (transient for timeouts,
    connection failures, HTTP 429 and 5xx).
    """
    uri = request.uri.strip()
    if not uri:
        raise ScanError("source_refused", "the request names no video (empty URI)")
    if _CONTROL.search(uri):
        raise ScanError("source_refused", "the URI holds control characters (NUL, newline, ...)")
    try:
        scheme = urlsplit(uri).scheme.lower()
    except ValueError as exc:  # e.g. an unclosed '[' in the host
        raise ScanError("source_refused", f"malformed URI: {exc}") from exc
    if scheme in ("http", "https"):
        video = _fetch_http(uri, settings)
    elif scheme == "file":
        video = _fetch_local(_file_uri_path(uri), (*settings.allowed_roots, *extra_roots))
    elif scheme == "":
        video = _fetch_local(uri, (*settings.allowed_roots, *extra_roots))
    else:
        raise ScanError("source_refused", f"unsupported URI scheme {scheme!r}: use a path, file://, http:// or https://")
    if request.sha256 and request.sha256.strip().lower() != video.sha256:
        video.close()
        raise ScanError(
            "checksum_mismatch", f"content sha256 {video.sha256} differs from the expected {request.sha256.strip().lower()}"
        )
    return video


# --- local files --------------------------------------------------------------------------


def _file_uri_path(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ScanError("source_refused", f"file:// URI on another host ({parts.netloc}) is not supported")
    return url2pathname(unquote(parts.path))


def _fetch_local(raw_path: str, roots: Sequence[str]) -> FetchedVideo:
    if not roots:
        raise ScanError("source_refused", "local files are not allowed here (no allowed root folders configured)")
    if _CONTROL.search(raw_path):  # also what a file:// URI's %00 decodes to
        raise ScanError("source_refused", "the path holds control characters (NUL, newline, ...)")
    # Resolve symlinks and '..' first, so the check applies to the file actually opened.
    try:
        path = Path(raw_path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loop, name too long, ...
        raise ScanError("source_refused", f"cannot resolve {raw_path}: {exc}") from exc
    resolved_roots = [Path(r).expanduser().resolve() for r in roots if r]
    if not any(path.is_relative_to(root) for root in resolved_roots):
        raise ScanError("source_refused", f"{raw_path} is outside the allowed folders")
    try:
        exists, regular = path.exists(), path.is_file()
    except OSError as exc:  # a name too long, a permission denied on the way
        raise ScanError("source_refused", f"cannot look up {raw_path}: {exc.strerror}") from exc
    if not exists:
        raise ScanError("source_not_found", f"no such file: {raw_path}")
    if not regular:
        raise ScanError("source_refused", f"{raw_path} is not a regular file")
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise ScanError("source_not_found", f"cannot read {raw_path}: {exc.strerror}") from exc
    return FetchedVideo(path, digest.hexdigest(), size)


# --- HTTP(S) ------------------------------------------------------------------------------


def _fetch_http(uri: str, settings: Settings) -> FetchedVideo:
    url = uri
    deadline = time.monotonic() + settings.http_total_timeout_s
    for _hop in range(settings.http_max_redirects + 1):
        # checked at every hop: a redirect's Location is as untrusted as the request
        if _NOT_IN_HTTP_URL.search(url):
            raise ScanError("source_refused", "the URL holds spaces or control characters (percent-encode them)")
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError as exc:  # a port that is not a number, an unclosed '['
            raise ScanError("source_refused", f"malformed URL {_shown(url)!r}: {exc}") from exc
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ScanError("source_refused", f"redirected to an unsupported scheme {scheme!r}")
        if not host:
            raise ScanError("source_refused", f"URL has no host: {_shown(url)!r}")
        addresses = _vetted_addresses(host, port, settings.http_allow_private)
        conn = _connection(scheme, host, port, addresses, settings)
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            try:
                conn.request("GET", target, headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
                resp = conn.getresponse()
            except (TimeoutError, socket.timeout) as exc:
                raise ScanError("http_timeout", f"{host}:{port} did not answer in time", transient=True) from exc
            except UnicodeError as exc:  # http.client writes the request line in ASCII
                raise ScanError("source_refused", f"URL {_shown(url)!r} is not ASCII (percent-encode it)") from exc
            except ssl.SSLCertVerificationError as exc:
                raise ScanError("http_error", f"TLS certificate of {host} not trusted: {exc.verify_message}") from exc
            except (OSError, http.client.HTTPException) as exc:
                raise ScanError("http_error", f"cannot reach {host}:{port}: {exc}", transient=True) from exc
            try:
                if resp.status in _REDIRECTS:
                    location = resp.getheader("Location")
                    if not location:
                        raise ScanError("http_error", f"HTTP {resp.status} redirect without a Location from {host}")
                    url = urljoin(url, location)
                    continue
                if resp.status != 200:
                    _raise_for_status(resp.status, resp.reason, _shown(url))
                return _download(resp, _shown(url), settings.http_max_bytes, deadline)
            finally:
                resp.close()  # the socket lives until the response lets go of it too
        finally:
            conn.close()
    raise ScanError(
        "too_many_redirects", f"more than {settings.http_max_redirects} redirects starting from {_shown(uri)}"
    )


def _vetted_addresses(host: str, port: int, allow_private: bool) -> list[str]:
    """Resolve `host` once; refuse it if any address is not public (unless allowed)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        transient = exc.errno == socket.EAI_AGAIN
        raise ScanError("http_error", f"cannot resolve host {host!r}: {exc.strerror}", transient=transient) from exc
    except (UnicodeError, ValueError) as exc:  # not a valid host name (IDNA), NUL
        raise ScanError("source_refused", f"host {host[:80]!r} is not a valid host name: {exc}") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise ScanError("http_error", f"host {host!r} has no address")
    if not allow_private:
        for address in addresses:
            if not _is_public(address):
                what = host if address == host else f"{host} resolves to {address}, which"
                raise ScanError("source_refused", f"{what} is a private, loopback or reserved address")
    return addresses


# IPv6 forms that carry an IPv4 address: the IPv4 one decides where the packets end up.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: IPv4 in the last 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local-use: site-defined, never public
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d (RFC 4291)


def _is_public(address: str) -> bool:
    """True for a globally routable unicast address, judging IPv4 embedded in IPv6 as itself.

    IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) addresses are judged by the
    IPv4 address they carry; 6to4 (2002::/16) and Teredo (2001::/32) ones are refused when
    the IPv4 addresses they embed are not public; the local-use NAT64 prefix and the
    deprecated IPv4-compatible form are always refused.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return _is_public_ip(ip.ipv4_mapped)
        if ip in _NAT64:
            return _is_public_ip(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in _NAT64_LOCAL or ip in _IPV4_COMPATIBLE:
            return False
        embedded = [ip.sixtofour] if ip.sixtofour is not None else list(ip.teredo or ())
        if not all(_is_public_ip(v4) for v4 in embedded):
            return False
    return _is_public_ip(ip)


def _is_public_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def _connection(
    scheme: str, host: str, port: int, addresses: list[str], settings: Settings
) -> http.client.HTTPConnection:
    cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    return cls(host, port, addresses, settings.http_connect_timeout_s, settings.http_read_timeout_s)


def _connect_vetted(addresses: list[str], port: int, connect_timeout: float, read_timeout: float) -> socket.socket:
    """A socket to the first vetted address that answers (never a fresh DNS lookup)."""
    error: OSError | None = None
    for address in addresses:
        try:
            sock = socket.create_connection((address, port), connect_timeout)
        except OSError as exc:
            error = exc
            continue
        sock.settimeout(read_timeout)
        return sock
    assert error is not None
    raise error


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the vetted addresses while sending the original Host header."""

    def __init__(self, host: str, port: int, addresses: list[str], connect_timeout: float, read_timeout: float):
        super().__init__(host, port, timeout=connect_timeout)
        self._addresses = addresses
        self._read_timeout = read_timeout

    def connect(self) -> None:
        self.sock = _connect_vetted(self._addresses, self.port, self.timeout, self._read_timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As above, with TLS verified against the host name (SNI and certificate)."""

    def __init__(self, host: str, port: int, addresses: list[str], connect_timeout: float, read_timeout: float):
        super().__init__(host, port, timeout=connect_timeout, context=ssl.create_default_context())
        self._addresses = addresses
        self._read_timeout = read_timeout

    def connect(self) -> None:
        sock = _connect_vetted(self._addresses, self.port, self.timeout, self._read_timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _raise_for_status(status: int, reason: str, url: str) -> None:
    if status in (404, 410):
        raise ScanError("source_not_found", f"HTTP {status} {reason} for {url}")
    transient = status == 429 or status >= 500
    raise ScanError("http_error", f"HTTP {status} {reason} for {url}", transient=transient)


def _download(resp: http.client.HTTPResponse, url: str, max_bytes: int, deadline: float) -> FetchedVideo:
    """Stream the body to a temporary file; `url` (query-free) names it in errors."""
    declared = resp.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise ScanError("source_too_large", f"{url} is {int(declared)} bytes, over the limit of {max_bytes}")
    # Named by nothing the URL says: no suffix for a demuxer or an image reader to trust.
    fd, name = tempfile.mkstemp(prefix="dfd-download-")
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                # Never ask for more than one byte past the cap: a body without a length,
                # or longer than it claimed, is cut off as soon as it goes over.
                chunk = resp.read1(min(_CHUNK, max_bytes + 1 - size))
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise ScanError("source_too_large", f"{url} sent more than the limit of {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
                if time.monotonic() > deadline:
                    raise socket.timeout("total download time exceeded")
    except (TimeoutError, socket.timeout) as exc:
        path.unlink(missing_ok=True)
        raise ScanError("http_timeout", f"{url} stalled after {size} bytes", transient=True) from exc
    except (OSError, http.client.HTTPException) as exc:
        path.unlink(missing_ok=True)
        raise ScanError("http_error", f"download of {url} broke off after {size} bytes: {exc!r}", transient=True) from exc
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return FetchedVideo(path, digest.hexdigest(), size, temporary=True)


def _shown(url: str) -> str:
    """`url` as errors may show it: no user info or query (signed URLs carry secrets there)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<malformed URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
