"""DFD_STORE_THUMBNAILS: the worker keeps a 96 px JPEG per face beside the verdict in Redis (off by default)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from worker.pipeline.scanner import Scanner
from worker.service.cache import VerdictCache, thumbnails_key
from worker.settings import Settings
from worker.types import ScanRequest


@pytest.fixture(scope="module")
def scanners(untrained_bundle):
    base = Settings.from_env({}, model_dir=str(untrained_bundle.path), frames_per_video=3)
    return Scanner(base), Scanner(base.replace(store_thumbnails=True))


def test_thumbnails_are_off_by_default_and_one_jpeg_per_face_when_on(scanners, carphone):
    request = ScanRequest("t-1", str(carphone))
    off, on = (s.scan([request], extra_roots=[str(Path(carphone).parent)])[0] for s in scanners)
    assert off.thumbnails is None
    assert len(on.faces) > 0 and len(on.thumbnails) == len(on.faces)
    image = cv2.imdecode(np.frombuffer(on.thumbnails[0], np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (96, 96, 3) and image.std() > 5  # a picture, not a blank square
    assert "thumbnails" not in on.to_dict()  # never in the Kafka message


def test_thumbnails_are_stored_beside_the_verdict_with_its_ttl(scanners, carphone, stack):
    settings = stack.settings()
    cache = VerdictCache.from_settings(settings)
    (verdict,) = scanners[1].scan([ScanRequest("t-2", str(carphone))], extra_roots=[str(Path(carphone).parent)])
    assert cache.put(verdict)
    key = thumbnails_key(settings.redis_key_prefix, "t-2")
    assert cache.thumbnail_count("t-2") == len(verdict.faces)
    assert cache.thumbnail("t-2", 0) == verdict.thumbnails[0]
    assert 0 < cache.client.ttl(key) <= settings.redis_ttl_s
    assert cache.get("t-2").thumbnails is None  # the JSON verdict does not carry them
