"""What the producer tests share: a stack's settings and verdicts to plant in Redis or the topic."""

import pytest

from worker.types import ModelInfo, Verdict

MODEL = ModelInfo("convnextv2-atto", "1.2.3", "ab" * 32)


def make_verdict(rid, sha="cd" * 32, label="real", score=0.1):
    return Verdict(rid, f"file:///{rid}.mp4", label, score=score, threshold=0.5, model=MODEL, content_sha256=sha)


@pytest.fixture
def settings(stack):
    return stack.settings()
