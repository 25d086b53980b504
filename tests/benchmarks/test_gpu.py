"""`make bench-gpu` must run where there is no GPU and say that it fell back to the CPU."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from benchmarks.gpu import GPU_PROVIDERS, run_config

pytestmark = pytest.mark.slow


def test_gpu_run_without_a_gpu_falls_back_to_the_cpu_and_says_so():
    if any(p in ort.get_available_providers() for p in GPU_PROVIDERS) and ort.get_device() == "GPU":
        pytest.skip("a GPU build of ONNX Runtime with a device is installed: this test is for CPU machines")
    r = run_config("cuda-fp16", "cuda", "fp16", videos=1, decode_threads=1, n_clips=1)
    assert r["fell_back_to_cpu"] is True
    assert all(names[0] == "CPUExecutionProvider" for names in r["providers_in_use"].values())
    assert r["videos"] == 1 and r["videos_per_s"] > 0 and not r["errors"]
    assert r["precision"] == "fp16" and r["stage_ms_per_video"]["classify"] > 0
