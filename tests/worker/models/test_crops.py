"""Face crops: square and margin maths, black padding at the frame's edges, eye alignment."""

from __future__ import annotations

import numpy as np
import pytest

from worker.models.crops import crop_faces, eye_angle, square_region
from worker.types import Detection


def detection(box, landmarks=None) -> Detection:
    if landmarks is None:
        x1, y1, x2, y2 = box
        landmarks = [[x1 + (x2 - x1) * 0.3, y1 + (y2 - y1) * 0.4], [x1 + (x2 - x1) * 0.7, y1 + (y2 - y1) * 0.4]] + [
            [(x1 + x2) / 2, (y1 + y2) / 2]
        ] * 3
    return Detection(np.array(box, np.float32), 0.99, np.array(landmarks, np.float32))


def test_square_region_maths():
    # 40 wide, 80 tall, centre (120, 140): side = 80 * 1.5 = 120, centred
    assert square_region(np.array([100, 100, 140, 180]), 0.5) == (60, 80, 120)
    assert square_region(np.array([100, 100, 140, 180]), 0.0) == (80, 100, 80)


def test_crop_of_a_known_rectangle_keeps_its_proportions():
    image = np.zeros((300, 400, 3), np.uint8)
    image[100:180, 100:140] = (255, 0, 0)  # red 40x80 rectangle = the "face box"
    [crop] = crop_faces(image, [detection([100, 100, 140, 180])], size=60, margin=0.5)
    assert crop.shape == (60, 60, 3) and crop.dtype == np.uint8
    # The 120 px square maps to 60 px: the rectangle becomes 20 x 40, centred.
    red = crop[..., 0] > 127
    ys, xs = np.nonzero(red)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 49, 20, 39)
    assert not crop[..., 1:].any()


def test_shapes_and_empty():
    image = np.full((100, 100, 3), 9, np.uint8)
    crops = crop_faces(image, [detection([10, 10, 50, 60]), detection([40, 30, 90, 90])], size=32, margin=0.3)
    assert crops.shape == (2, 32, 32, 3)
    assert crop_faces(image, [], size=32, margin=0.3).shape == (0, 32, 32, 3)


@pytest.mark.parametrize("align", [False, True])
def test_outside_the_frame_is_black(align):
    image = np.full((200, 200, 3), 200, np.uint8)
    # Box at the top-left corner: with margin 1.0 the 80 px square starts at (-20, -20).
    [crop] = crop_faces(image, [detection([0, 0, 40, 40])], size=80, margin=1.0, align=align)
    assert crop[:18, :18].max() == 0  # outside: zeros
    assert crop[22:, 22:].min() == 200  # inside: the image
    assert crop[:18, 22:].max() == 0 and crop[22:, :18].max() == 0


def test_alignment_levels_the_eyes():
    image = np.full((400, 400, 3), 255, np.uint8)
    # Eyes tilted by 20 degrees (right eye lower), marked by coloured dots.
    centre = np.array([200.0, 200.0])
    tilt = np.radians(20)
    direction = np.array([np.cos(tilt), np.sin(tilt)])
    left, right = centre - 40 * direction, centre + 40 * direction
    for point, colour in ((left, (255, 0, 0)), (right, (0, 0, 255))):
        x, y = np.round(point).astype(int)
        image[y - 4 : y + 5, x - 4 : x + 5] = colour
    landmarks = [left, right, centre + [0, 30], centre + [-25, 60], centre + [25, 60]]
    det = detection([130, 130, 270, 290], landmarks)
    assert eye_angle(det.landmarks) == pytest.approx(20, abs=1e-4)

    def dot_centres(crop):
        red = (crop[..., 0] > 200) & (crop[..., 2] < 60)
        blue = (crop[..., 2] > 200) & (crop[..., 0] < 60)
        return [np.argwhere(mask).mean(axis=0) for mask in (red, blue)]  # (y, x)

    (ly, lx), (ry, rx) = dot_centres(crop_faces(image, [det], size=160, margin=0.0, align=True)[0])
    assert lx < rx and abs(ly - ry) < 1.0  # level after alignment
    (ly, lx), (ry, rx) = dot_centres(crop_faces(image, [det], size=160, margin=0.0, align=False)[0])
    assert ry - ly > 20  # and tilted without it


def test_alignment_on_a_real_tilted_face(astronaut):
    import cv2

    from worker.models.retinaface import FaceDetector
    from worker.settings import Settings

    image = cv2.cvtColor(cv2.imread(str(astronaut)), cv2.COLOR_BGR2RGB)
    tilted = cv2.warpAffine(image, cv2.getRotationMatrix2D((256, 256), 25, 1.0), (512, 512))
    detector = FaceDetector(Settings(min_face_px=0))
    [[face]] = detector.detect([tilted])
    assert abs(eye_angle(face.landmarks)) > 15  # the detector sees the tilt
    [plain, aligned] = [crop_faces(tilted, [face], size=160, margin=0.3, align=a)[0] for a in (False, True)]
    # The detector, run again on each crop, finds the eyes tilted in one and level in the other.
    [[in_plain]], [[in_aligned]] = detector.detect([plain]), detector.detect([aligned])
    assert abs(eye_angle(in_plain.landmarks)) > 15
    assert abs(eye_angle(in_aligned.landmarks)) < 4
