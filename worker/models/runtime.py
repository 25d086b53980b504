"""ONNX Runtime sessions: execution providers chosen by configuration, threads set sensibly.

Every model of the worker (face detector, classifier) gets its session here, so provider
choice, thread counts and the report of what is really in use live in one place.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from worker.paths import cache_dir
from worker.settings import Settings

log = logging.getLogger(__name__)

RUNTIME_MISSING = (
    "no ONNX Runtime is installed; choose one: `pip install 'deepfake-stream[cpu]'` (onnxruntime, any machine) "
    "or `pip install 'deepfake-stream[gpu]'` (onnxruntime-gpu, NVIDIA CUDA 13); never both"
)


class RuntimeMissing(ImportError):
    """Neither onnxruntime nor onnxruntime-gpu is installed."""


def require_runtime():
    """The onnxruntime module, or RuntimeMissing with what to install (checked when the worker starts)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeMissing(RUNTIME_MISSING) from exc
    return onnxruntime


ort = require_runtime()

CPU = "CPUExecutionProvider"
PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": CPU,
}
AUTO_ORDER = ("tensorrt", "cuda", "cpu")


def requested_providers(settings: Settings) -> list[str]:
    """ORT provider names wanted by `settings.providers`, in order, available ones only, CPU last."""
    names: list[str] = []
    for choice in settings.providers or ("auto",):
        key = choice.strip().lower()
        if key == "auto":
            names.extend(PROVIDER_NAMES[k] for k in AUTO_ORDER)
        elif key in PROVIDER_NAMES:
            names.append(PROVIDER_NAMES[key])
        else:
            raise ValueError(f"unknown execution provider {choice!r}: use auto, tensorrt, cuda or cpu")
    available = set(ort.get_available_providers())
    ordered: list[str] = []
    for name in names:
        if name == CPU:
            break  # CPU takes every node, so providers listed after it would never run
        if name in available and name not in ordered:
            ordered.append(name)
    # CPU always closes the list: a GPU provider that fails at session creation falls back to it.
    ordered.append(CPU)
    return ordered


def provider_options(name: str) -> dict[str, str]:
    """Options per provider. TensorRT builds an engine per input shape, which takes minutes:
    keep the engines on disk so a restarted worker reuses them (not exercised on CPU-only CI)."""
    if name != PROVIDER_NAMES["tensorrt"]:
        return {}
    cache = cache_dir() / "tensorrt"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: build engines every start rather than fail
        return {}
    return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache)}


def intra_op_threads(settings: Settings) -> int:
    if settings.intra_op_threads > 0:
        return settings.intra_op_threads
    # The cores this process may run on (a container's CPU set), not the machine's count.
    return max(1, len(os.sched_getaffinity(0)))


def create_session(model: bytes | str | Path, settings: Settings) -> ort.InferenceSession:
    """An inference session for `model` (ONNX bytes or a file path) with the configured providers."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads(settings)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Batch sizes vary from call to call: per-shape memory patterns would be planned and
    # kept for each of them and only pay off for fixed shapes.
    options.enable_mem_pattern = False
    # Decode threads share the cores with inference; spinning ORT threads would steal them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    wanted = requested_providers(settings)
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(
        source, sess_options=options, providers=[(name, provider_options(name)) for name in wanted]
    )
    in_use = active_providers(session)
    label = "<bytes>" if isinstance(model, bytes) else str(model)
    log.info("onnx session for %s: providers requested %s, in use %s, %d intra-op threads",
             label, wanted, in_use, options.intra_op_num_threads)
    if in_use and wanted[0] != in_use[0]:
        log.warning("execution provider %s was requested but %s is in use", wanted[0], in_use[0])
    return session


def active_providers(session: ort.InferenceSession) -> list[str]:
    """The providers the session actually runs on (a requested GPU provider may have fallen back)."""
    return list(session.get_providers())
