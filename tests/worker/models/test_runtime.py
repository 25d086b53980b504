"""ONNX Runtime sessions: provider choice and fallback, threads, what is reported as in use."""

from __future__ import annotations

import os

import onnxruntime as ort
import pytest

from worker.models.retinaface import load_detector_model
from worker.models.runtime import (
    active_providers,
    create_session,
    intra_op_threads,
    provider_options,
    requested_providers,
)
from worker.settings import Settings

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def model() -> bytes:
    return load_detector_model(Settings())


@pytest.mark.skipif(HAS_CUDA, reason="checks the fallback on a machine without a GPU provider")
def test_cuda_requested_without_gpu_reports_cpu(model):
    session = create_session(model, Settings(providers=("cuda", "cpu")))
    assert active_providers(session) == ["CPUExecutionProvider"]
    # auto and an explicit GPU-only choice fall back the same way
    assert active_providers(create_session(model, Settings(providers=("auto",)))) == ["CPUExecutionProvider"]
    assert requested_providers(Settings(providers=("tensorrt",))) == ["CPUExecutionProvider"]


def test_requested_order_keeps_available_and_ends_with_cpu(monkeypatch):
    monkeypatch.setattr(
        ort, "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert requested_providers(Settings(providers=("auto",))) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider",
    ]
    assert requested_providers(Settings(providers=("cpu", "cuda"))) == ["CPUExecutionProvider"]
    assert requested_providers(Settings(providers=("cuda",))) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert requested_providers(Settings(providers=("CUDA",))) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ValueError, match="unknown execution provider 'rocm'"):
        requested_providers(Settings(providers=("rocm",)))


def test_threads():
    assert intra_op_threads(Settings(intra_op_threads=3)) == 3
    assert intra_op_threads(Settings(intra_op_threads=0)) == len(os.sched_getaffinity(0))


def test_session_from_path_runs(tmp_path, model):
    path = tmp_path / "det.onnx"
    path.write_bytes(model)
    session = create_session(path, Settings(providers=("cpu",), intra_op_threads=1))
    assert session.get_inputs()[0].name == "input"
    assert [o.name for o in session.get_outputs()] == ["loc", "conf", "landmarks"]


def test_tensorrt_engines_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    options = provider_options("TensorrtExecutionProvider")
    assert options == {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(tmp_path / "deepfake-stream" / "tensorrt")}
    assert (tmp_path / "deepfake-stream" / "tensorrt").is_dir()
    assert provider_options("CUDAExecutionProvider") == {} and provider_options("CPUExecutionProvider") == {}
