"""The settings object: environment parsing, refusal of unknown names, and the README table."""

from pathlib import Path

import pytest

from worker.settings import Settings, markdown_table


def test_defaults_and_parsing():
    s = Settings.from_env(
        {
            "DFD_FRAMES_PER_VIDEO": "16",
            "DFD_HTTP_ALLOW_PRIVATE": "yes",
            "DFD_PROVIDERS": "cuda, cpu",
            "DFD_RETRY_BACKOFF_S": "0.25",
            "PATH": "/usr/bin",  # other variables are none of our business
        }
    )
    assert s.frames_per_video == 16 and s.http_allow_private is True
    assert s.providers == ("cuda", "cpu") and s.retry_backoff_s == 0.25
    assert Settings.from_env({}).frames_per_video == 10  # the seed's 10 frames per video


def test_unknown_and_malformed_variables_are_refused():
    with pytest.raises(ValueError, match="DFD_FRAMES_PER_VIDOE"):
        Settings.from_env({"DFD_FRAMES_PER_VIDOE": "3"})
    with pytest.raises(ValueError, match="DFD_FRAMES_PER_VIDEO='ten'"):
        Settings.from_env({"DFD_FRAMES_PER_VIDEO": "ten"})
    with pytest.raises(ValueError, match="DFD_ALIGN_FACES"):
        Settings.from_env({"DFD_ALIGN_FACES": "maybe"})


def test_secrets_are_masked():
    s = Settings.from_env({"DFD_KAFKA_SASL_PASSWORD": "hunter2"})
    assert s.redacted()["kafka_sasl_password"] == "***"
    assert "hunter2" not in str(s.redacted())


def test_readme_documents_every_setting():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert markdown_table() in readme, "README's configuration table is stale: paste `dfd-worker settings --markdown`"


def test_is_set_tells_values_given_on_purpose_from_defaults():
    s = Settings.from_env({"DFD_MIN_FACE_PX": "24"})  # the default's value, but set on purpose
    assert s.is_set("min_face_px") and not s.is_set("detect_long_side")
    assert s.replace(detect_long_side=640).is_set("detect_long_side") and s.replace(detect_long_side=640).is_set("min_face_px")
    assert Settings(max_faces_per_frame=1).is_set("max_faces_per_frame")  # differs from the default
    assert not Settings().is_set("max_faces_per_frame")
