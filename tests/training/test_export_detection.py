"""`dfd-train export` records the detection settings `dfd-train prepare` used, not today's defaults."""

from __future__ import annotations

from training.export import detection_settings


def test_detection_settings_come_from_the_prepare_info():
    info = {"prepare": {"detect_long_side": 320, "face_score_threshold": 0.75, "min_face_px": 10,
                        "max_faces_per_frame": 2, "crop_margin": 0.3, "input_size": 64}}
    assert detection_settings(info) == {"detect_long_side": 320, "face_score_threshold": 0.75, "min_face_px": 10,
                                        "max_faces_per_frame": 2}
    assert detection_settings({}) == {}  # a model from before prepare recorded them: the bundle gets the defaults
