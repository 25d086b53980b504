"""docs/deploy.md states what the code does: the Redis key scheme, the numbers it quotes."""

from __future__ import annotations

import re

from tests.deploy.conftest import KUBERNETES, REPO, one, render
from worker.service.cache import content_key, request_key
from worker.settings import Settings

DOC = (REPO / "docs" / "deploy.md").read_text()
FLAT = " ".join(DOC.split())  # quoted phrases may be wrapped across lines


def test_redis_key_scheme_is_the_caches():
    assert f"`{request_key('{prefix}', '{request_id}')}`" in DOC
    model = "0123456789abcdef" * 4
    documented = content_key("{prefix}", "{content_sha256}", model).replace(model[:16], "{model_sha256[:16]}")
    assert f"`{documented}`" in DOC
    example = re.search(r"redis-cli GET (\S+)", DOC).group(1)
    assert example.startswith(request_key(Settings().redis_key_prefix, ""))


def test_quoted_defaults_and_limits_match_the_manifests():
    cpu = render(KUBERNETES / "overlays" / "cpu")
    gpu = render(KUBERNETES / "overlays" / "gpu")
    scaled = one(cpu, "ScaledObject")["spec"]
    grace = one(cpu, "Deployment", "dfd-worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert f"`maxReplicaCount: {scaled['maxReplicaCount']}` (= partitions)" in FLAT
    assert f"`terminationGracePeriodSeconds: {grace}`" in FLAT
    thresholds = [one(r, "ScaledObject")["spec"]["triggers"][0]["metadata"]["lagThreshold"] for r in (cpu, gpu)]
    assert f"`lagThreshold` {thresholds[0]} (CPU) or {thresholds[1]} (GPU)" in FLAT
    assert f"`DFD_DRAIN_GRACE_S` ({int(Settings().drain_grace_s)} s)" in FLAT
