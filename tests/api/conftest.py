"""dfd-api served for real (uvicorn on a free port, in a thread) against the session's broker and Redis."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from api.app import create_app
from api.keys import ApiKey, KeyStore, hash_key
from worker.localstack import free_port
from worker.settings import Settings
from worker.types import FaceResult, ModelInfo, Verdict

READ_KEY, SUBMIT_KEY, BOTH_KEY = "k-read-0123456789", "k-submit-0123456789", "k-both-0123456789"
KEYS = KeyStore({
    hash_key(READ_KEY): ApiKey("reader", frozenset({"read"})),
    hash_key(SUBMIT_KEY): ApiKey("submitter", frozenset({"submit"})),
    hash_key(BOTH_KEY): ApiKey("both", frozenset({"read", "submit"})),
})
MODEL = ModelInfo("convnextv2-atto-dfd", "2026.11.1", "ab" * 32, trained=True, demo=True)


def make_verdict(rid: str, label: str = "fake", score: float | None = 0.9, sha: str = "cd" * 32, **kw) -> Verdict:
    faces = [
        FaceResult(0, 0.0, [10.0, 20.0, 60.0, 80.0], 0.99, 0.95),
        FaceResult(1, 2.5, [12.0, 22.0, 62.0, 82.0], 0.98, 0.35),
    ] if label in ("fake", "real") else []
    return Verdict(rid, f"https://cdn.example.com/{rid}.mp4", label, score=score, threshold=0.5, aggregation="mean",
                   model=kw.pop("model", MODEL), faces=faces, frames_sampled=4, frames_with_faces=2 if faces else 0,
                   content_sha256=sha, **kw)


@dataclass
class Served:
    url: str
    settings: Settings
    server: uvicorn.Server

    def client(self, key: str | None = BOTH_KEY, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)


def serve(settings: Settings, keys: KeyStore = KEYS, run_indexer: bool = True):
    """Start dfd-api on a free port; returns (Served, stop function)."""
    port = free_port()
    app = create_app(settings, keys, run_indexer=run_indexer)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("dfd-api did not start")
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(15)

    return Served(f"http://127.0.0.1:{port}", settings, server), stop


@pytest.fixture
def api_settings(stack) -> Settings:
    settings = stack.settings(api_rate_limit_per_s=1000.0, api_rate_burst=1000)
    return settings.replace(api_group_id=f"api-{settings.group_id}")  # the index consumer's own group per test


@pytest.fixture
def api(api_settings):
    served, stop = serve(api_settings)
    yield served
    stop()
