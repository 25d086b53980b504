"""Faces over DFD_MAX_FACES_PER_FRAME are reported as dropped, never silently left out."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from worker.models.retinaface import FaceDetector
from worker.pipeline.scanner import Scanner
from worker.settings import Settings
from worker.types import ScanRequest


@pytest.fixture(scope="module")
def group_photo(astronaut, tmp_path_factory):
    """Six copies of the astronaut's face in a 3x2 grid: a group photo of six people."""
    face = cv2.imread(str(astronaut))
    grid = np.vstack([np.hstack([face] * 3)] * 2)
    path = tmp_path_factory.mktemp("group") / "six.png"
    cv2.imwrite(str(path), grid)
    return path


def test_detector_counts_what_the_cap_leaves_out(group_photo):
    rgb = cv2.imread(str(group_photo))[:, :, ::-1].copy()
    (all_faces,) = FaceDetector(Settings(max_faces_per_frame=10)).detect([rgb])
    assert len(all_faces) == 6 and all_faces.dropped == 0
    (capped,) = FaceDetector(Settings(max_faces_per_frame=4)).detect([rgb])
    assert len(capped) == 4 and capped.dropped == 2


@pytest.mark.parametrize("cap, scored, dropped", [(4, 4, 2), (6, 6, 0)])
def test_verdict_reports_faces_dropped(untrained_bundle, group_photo, cap, scored, dropped):
    scanner = Scanner(Settings(model_dir=str(untrained_bundle.path), max_faces_per_frame=cap))
    (v,) = scanner.scan([ScanRequest("group", str(group_photo))], extra_roots=[str(group_photo.parent)])
    assert len(v.faces) == scored
    assert v.faces_dropped == dropped and v.to_dict()["faces_dropped"] == dropped
