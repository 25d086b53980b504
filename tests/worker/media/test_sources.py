"""fetch(): allowed roots for local files and file://, and HTTP against a real local server."""

from __future__ import annotations

import hashlib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from worker.media.sources import FetchedVideo, _is_public, fetch
from worker.settings import Settings
from worker.types import ScanError, ScanRequest

BODY = bytes(range(256)) * 400  # 102,400 bytes standing in for a video
BODY_SHA = hashlib.sha256(BODY).hexdigest()
STREAMED_TOTAL = 64 * 1024 * 1024  # what /endless would send if nobody stopped it


def _req(uri: str, sha256: str | None = None) -> ScanRequest:
    return ScanRequest(request_id="r1", uri=uri, sha256=sha256)


def _refused(request: ScanRequest, settings: Settings, code: str, **kwargs) -> ScanError:
    with pytest.raises(ScanError) as err:
        fetch(request, settings, **kwargs)
    assert err.value.code == code, err.value
    return err.value


# --- local files ----------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path) -> dict[str, Path]:
    root = tmp_path / "videos"
    other = tmp_path / "private"
    root.mkdir()
    other.mkdir()
    (root / "clip.mp4").write_bytes(BODY)
    (other / "secret.mp4").write_bytes(b"not yours")
    (root / "link.mp4").symlink_to(other / "secret.mp4")
    (root / "sub").mkdir()
    return {"root": root, "other": other}


def test_local_file_inside_a_root(tree):
    settings = Settings(allowed_roots=(str(tree["root"]),))
    with fetch(_req(str(tree["root"] / "clip.mp4")), settings) as video:
        assert isinstance(video, FetchedVideo)
        assert video.path == (tree["root"] / "clip.mp4").resolve()
        assert (video.sha256, video.size) == (BODY_SHA, len(BODY))
    assert (tree["root"] / "clip.mp4").exists()  # closing never deletes the user's file


def test_file_uri_inside_and_outside(tree):
    settings = Settings(allowed_roots=(str(tree["root"]),))
    with fetch(_req((tree["root"] / "clip.mp4").as_uri()), settings) as video:
        assert video.sha256 == BODY_SHA
    err = _refused(_req((tree["other"] / "secret.mp4").as_uri()), settings, "source_refused")
    assert "outside the allowed folders" in err.reason
    _refused(_req("file://fileserver/share/clip.mp4"), settings, "source_refused")


@pytest.mark.parametrize(
    "relative",
    ["../private/secret.mp4", "sub/../../private/secret.mp4", "link.mp4"],
    ids=["dotdot", "nested_dotdot", "symlink_out"],
)
def test_escapes_from_the_root_are_refused(tree, relative):
    settings = Settings(allowed_roots=(str(tree["root"]),))
    path = f"{tree['root']}/{relative}"
    err = _refused(_req(path), settings, "source_refused")
    assert "outside the allowed folders" in err.reason


def test_outside_path_and_no_roots(tree):
    secret = str(tree["other"] / "secret.mp4")
    _refused(_req(secret), Settings(allowed_roots=(str(tree["root"]),)), "source_refused")
    err = _refused(_req(secret), Settings(), "source_refused")
    assert "no allowed root" in err.reason
    # The scan CLI passes the folders of its arguments as extra roots.
    with fetch(_req(secret), Settings(), extra_roots=[str(tree["other"])]) as video:
        assert video.size == len(b"not yours")


def test_missing_file_and_directory(tree):
    settings = Settings(allowed_roots=(str(tree["root"]),))
    err = _refused(_req(str(tree["root"] / "gone.mp4")), settings, "source_not_found")
    assert "gone.mp4" in err.reason
    _refused(_req(str(tree["root"] / "sub")), settings, "source_refused")


@pytest.mark.parametrize("uri", ["ftp://example.com/a.mp4", "s3://bucket/a.mp4", "data:video/mp4;base64,AAAA", "gopher://x/"])
def test_unknown_schemes_are_refused(uri):
    err = _refused(_req(uri), Settings(allowed_roots=("/",)), "source_refused")
    assert "unsupported URI scheme" in err.reason


def test_empty_uri_is_refused():
    err = _refused(_req("  "), Settings(allowed_roots=("/",)), "source_refused")
    assert "empty" in err.reason


def test_sha256_checked(tree):
    settings = Settings(allowed_roots=(str(tree["root"]),))
    path = str(tree["root"] / "clip.mp4")
    with fetch(_req(path, sha256=BODY_SHA.upper()), settings) as video:
        assert video.sha256 == BODY_SHA
    err = _refused(_req(path, sha256="0" * 64), settings, "checksum_mismatch")
    assert BODY_SHA in err.reason and not err.transient


# --- HTTP -----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    sent: dict[str, int] = {}
    done: dict[str, threading.Event] = {}

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/video.mp4":
            self._send(200, BODY)
        elif path == "/missing.mp4":
            self._send(404, b"no such video")
        elif path == "/broken.mp4":
            self._send(500, b"oops")
        elif path == "/busy.mp4":
            self._send(429, b"slow down")
        elif path == "/slow.mp4":
            time.sleep(2.0)
            self._send(200, BODY)
        elif path == "/stall.mp4":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[:1000])
            self.wfile.flush()
            time.sleep(2.0)
        elif path == "/drip.mp4":
            # A byte every 0.1 s: never trips the read timeout, only the total deadline.
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            try:
                for i in range(100):
                    self.wfile.write(BODY[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        elif path == "/huge-declared.mp4":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            self.wfile.write(BODY)
        elif path == "/lying-length.mp4":
            # Claims 1000 bytes, sends far more: only the claimed bytes are a body.
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(BODY * 20)
        elif path == "/endless.mp4":
            self._stream_without_length()
        elif path.startswith("/hop/"):
            n = int(path.rsplit("/", 1)[1])
            self._redirect(f"/hop/{n - 1}" if n > 0 else "/video.mp4")
        elif path == "/loop.mp4":
            self._redirect("/loop.mp4")
        elif path == "/to-ftp.mp4":
            self._redirect("ftp://example.com/video.mp4")
        elif path == "/to-space.mp4":
            self._redirect("/video.mp4 HTTP/1.1\r\nX-Injected: 1")
        else:
            self._send(400, b"?")

    def _send(self, status: int, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up first (timeout tests)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _stream_without_length(self) -> None:
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        sent = 0
        try:
            while sent < STREAMED_TOTAL:
                self.wfile.write(BODY)
                sent += len(BODY)
        except OSError:
            pass  # the client hung up, as it should
        finally:
            _Handler.sent["endless"] = sent
            _Handler.done["endless"].set()
        self.close_connection = True


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


OPEN = Settings(http_allow_private=True, http_read_timeout_s=0.5, http_connect_timeout_s=2.0)


def test_http_200_downloads_to_a_temporary_file(server):
    with fetch(_req(f"{server}/video.mp4?token=abc", sha256=BODY_SHA), OPEN) as video:
        assert video.path.read_bytes() == BODY
        assert (video.sha256, video.size) == (BODY_SHA, len(BODY))
        assert video.path.suffix == "" and "video" not in video.path.name  # nothing taken from the URL
        path = video.path
    assert not path.exists()


def test_http_checksum_mismatch_removes_the_download(server, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkstemp puts downloads
    err = _refused(_req(f"{server}/video.mp4", sha256="ab" * 32), OPEN, "checksum_mismatch")
    assert BODY_SHA in err.reason
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "path, code, transient",
    [
        ("/missing.mp4", "source_not_found", False),
        ("/broken.mp4", "http_error", True),
        ("/busy.mp4", "http_error", True),
    ],
)
def test_http_status_errors(server, path, code, transient):
    err = _refused(_req(server + path), OPEN, code)
    assert err.transient is transient
    assert path in err.reason


def test_http_errors_never_show_url_secrets(server):
    err = _refused(_req(f"{server}/missing.mp4?X-Amz-Signature=s3cr3t"), OPEN, "source_not_found")
    assert "s3cr3t" not in err.reason and "/missing.mp4" in err.reason
    host_port = server.split("//")[1]
    err = _refused(_req(f"http://user:pa55@{host_port}/loop.mp4?token=s3cr3t"), OPEN, "too_many_redirects")
    assert "s3cr3t" not in err.reason and "pa55" not in err.reason


def test_http_slow_server_times_out(server):
    err = _refused(_req(f"{server}/slow.mp4"), OPEN, "http_timeout")
    assert err.transient


def test_http_stall_mid_body_times_out(server):
    err = _refused(_req(f"{server}/stall.mp4"), OPEN, "http_timeout")
    assert err.transient and "after 1000 bytes" in err.reason


def test_http_drip_feed_hits_the_total_deadline(server):
    t0 = time.monotonic()
    err = _refused(_req(f"{server}/drip.mp4"), OPEN.replace(http_total_timeout_s=1.0), "http_timeout")
    assert err.transient and "stalled after" in err.reason
    assert time.monotonic() - t0 < 5  # gave up near the deadline, not after the 10 s drip


def test_http_connection_refused_is_transient():
    with socket.socket() as s:  # a port that was free a moment ago: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = _refused(_req(f"http://127.0.0.1:{port}/video.mp4"), OPEN, "http_error")
    assert err.transient


def test_http_declared_size_over_the_cap_is_refused_unread(server):
    err = _refused(_req(f"{server}/huge-declared.mp4"), OPEN, "source_too_large")
    assert str(10**12) in err.reason


def test_http_body_without_length_is_cut_at_the_cap(server):
    _Handler.done["endless"] = threading.Event()
    settings = OPEN.replace(http_max_bytes=256 * 1024)
    err = _refused(_req(f"{server}/endless.mp4"), settings, "source_too_large")
    assert "256" in err.reason or str(256 * 1024) in err.reason
    assert _Handler.done["endless"].wait(10)
    # The client hung up long before the server could send all it meant to.
    assert _Handler.sent["endless"] < STREAMED_TOTAL // 4, _Handler.sent["endless"]


def test_http_lying_length_never_stores_more_than_claimed(server):
    settings = OPEN.replace(http_max_bytes=64 * 1024)
    with fetch(_req(f"{server}/lying-length.mp4"), settings) as video:
        assert video.size == 1000 and video.path.read_bytes() == BODY[:1000]


def test_http_redirects_within_the_limit(server):
    with fetch(_req(f"{server}/hop/2"), OPEN.replace(http_max_redirects=3)) as video:
        assert video.sha256 == BODY_SHA  # hop/2 -> hop/1 -> hop/0 -> video: 3 redirects


def test_http_redirects_over_the_limit(server):
    err = _refused(_req(f"{server}/hop/3"), OPEN.replace(http_max_redirects=3), "too_many_redirects")
    assert "more than 3 redirects" in err.reason
    _refused(_req(f"{server}/loop.mp4"), OPEN, "too_many_redirects")


def test_http_redirect_to_another_scheme_is_refused(server):
    err = _refused(_req(f"{server}/to-ftp.mp4"), OPEN, "source_refused")
    assert "ftp" in err.reason


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "10.0.0.1", "192.168.1.20", "172.16.0.5", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "224.0.0.1", "[::1]", "[fe80::1]", "[fc00::1]", "[::ffff:127.0.0.1]", "localhost", "2130706433"],
)
def test_private_targets_are_refused_without_connecting(host):
    # Nothing listens on these addresses (or port 9): a connection attempt would be an
    # http_error or a timeout, not source_refused.
    err = _refused(_req(f"http://{host}:9/video.mp4"), Settings(http_connect_timeout_s=0.5), "source_refused")
    assert "private, loopback or reserved" in err.reason
    assert not err.transient


def test_localhost_server_refused_unless_allowed(server):
    port = server.rsplit(":", 1)[1]
    _refused(_req(f"http://localhost:{port}/video.mp4"), Settings(), "source_refused")
    with fetch(_req(f"http://localhost:{port}/video.mp4"), OPEN) as video:
        assert video.sha256 == BODY_SHA


def test_unresolvable_host():
    err = _refused(_req("http://no-such-host.invalid/video.mp4"), OPEN, "http_error")
    assert "cannot resolve" in err.reason


# --- HTTPS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    """A private CA and a certificate for localhost / 127.0.0.1 signed by it (openssl CLI)."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *args: subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=dfd test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    run("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf")
    return {"ca": d / "ca.pem", "cert": d / "srv.pem", "key": d / "srv.key"}


@pytest.fixture(scope="module")
def tls_server(tls_files):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls_files["cert"], tls_files["key"])
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_https_verifies_the_host_name_on_the_pinned_address(tls_server, tls_files, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files["ca"]))  # trust the test CA
    with fetch(_req(f"https://localhost:{tls_server}/video.mp4", sha256=BODY_SHA), OPEN) as video:
        assert video.path.read_bytes() == BODY


def test_https_untrusted_certificate_is_refused(tls_server):
    err = _refused(_req(f"https://localhost:{tls_server}/video.mp4"), OPEN, "http_error")
    assert "certificate" in err.reason and not err.transient


# --- hostile paths and URIs: a refusal, never a crash ----------------------------------------


@pytest.mark.parametrize(
    "uri",
    ["{root}/clip\x00.mp4", "{root}/clip.mp4\x00/../x", "file://{root}/clip%00.mp4", "file://{root}/a%0a.mp4",
     "{root}/a\x1b[31m.mp4", "{root}/a\x7f.mp4", "\x00", "http://exa\x00mple.com/v.mp4", "https://example.com/\x00"],
)
def test_control_characters_in_paths_and_uris_are_refused(tree, uri):
    err = _refused(_req(uri.format(root=tree["root"])), Settings(allowed_roots=(str(tree["root"]),)), "source_refused")
    assert "control characters" in err.reason


def test_paths_the_os_cannot_resolve_are_refused(tree):
    settings = Settings(allowed_roots=(str(tree["root"]),))
    (tree["root"] / "loop1").symlink_to(tree["root"] / "loop2")
    (tree["root"] / "loop2").symlink_to(tree["root"] / "loop1")
    _refused(_req(str(tree["root"] / "loop1")), settings, "source_refused")
    _refused(_req(str(tree["root"] / ("a" * 5000))), settings, "source_refused")  # name too long


@pytest.mark.parametrize(
    "uri",
    ["http://[::1/v.mp4", "http://a..b/v.mp4", f"http://{'a' * 300}.com/v.mp4", "http://./v.mp4",
     "http://\udcff/v.mp4", "http://example.com/a b.mp4"],
)
def test_malformed_http_urls_are_refused(uri):
    _refused(_req(uri), Settings(http_connect_timeout_s=0.5), "source_refused")


def test_http_redirect_with_spaces_and_non_ascii_paths_are_refused(server):
    err = _refused(_req(f"{server}/to-space.mp4"), OPEN, "source_refused")
    assert "spaces or control characters" in err.reason
    err = _refused(_req(f"{server}/vid\u00e9o.mp4"), OPEN, "source_refused")
    assert "not ASCII" in err.reason


# IPv6 forms that embed an IPv4 address: judged by the IPv4 address inside.
EMBEDDING_PRIVATE = {
    "6to4 of 127.0.0.1": "2002:7f00:1::1",
    "6to4 of 10.0.0.1": "2002:a00:1::",
    "6to4 of 169.254.169.254": "2002:a9fe:a9fe::1",
    "6to4 of 192.168.1.1": "2002:c0a8:101::1",
    "Teredo, client 10.0.0.1": "2001:0:4136:e378:8000:63bf:f5ff:fffe",
    "Teredo, server 127.0.0.1": "2001:0:7f00:1:8000:63bf:f7f7:f7f7",
    "NAT64 of 127.0.0.1": "64:ff9b::7f00:1",
    "NAT64 of 169.254.169.254": "64:ff9b::a9fe:a9fe",
    "NAT64 of 192.168.0.1": "64:ff9b::c0a8:1",
    "local-use NAT64 of 10.0.0.1": "64:ff9b:1::a00:1",
    "local-use NAT64 of 8.8.8.8": "64:ff9b:1:808:8:800::",
    "IPv4-mapped 10.0.0.1": "::ffff:a00:1",
    "IPv4-mapped 169.254.169.254": "::ffff:169.254.169.254",
    "IPv4-compatible 127.0.0.1": "::127.0.0.1",
    "IPv4-compatible 8.8.8.8": "::8.8.8.8",
}


@pytest.mark.parametrize("address", EMBEDDING_PRIVATE.values(), ids=EMBEDDING_PRIVATE.keys())
def test_private_ipv4_inside_ipv6_is_refused_without_connecting(address):
    assert not _is_public(address)
    err = _refused(_req(f"http://[{address}]:9/video.mp4"), Settings(http_connect_timeout_s=0.5), "source_refused")
    assert "private, loopback or reserved" in err.reason


@pytest.mark.parametrize(
    "address", ["2002:808:808::1", "64:ff9b::808:808", "::ffff:8.8.8.8", "2606:4700:4700::1111", "8.8.8.8"],
    ids=["6to4 of 8.8.8.8", "NAT64 of 8.8.8.8", "IPv4-mapped 8.8.8.8", "plain IPv6", "plain IPv4"],
)
def test_public_ipv4_inside_ipv6_stays_allowed(address):
    # the guard must not refuse everything: an IPv6-only network reaches public hosts via NAT64
    assert _is_public(address)
