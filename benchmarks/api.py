"""dfd-api benchmark: cached verdict lookups by id, load from a second process.

    python -m benchmarks.api [--verdicts 10000] [--seconds 10] [--workers 1] [--rate 500]

A private Tansu broker and Redis, 10,000 realistic verdicts (10 faces each) planted in the
cache, `dfd-api serve` in its own process, then:
- throughput: `wrk` (Debian's, a second process, 16 connections, random ids) on
  GET /v1/verdicts/{id} with an API key, and, as the baseline in the same run, on /healthz
  (no key, no Redis): the framework's ceiling on this machine. Besides requests/s, the CPU
  milliseconds per request of dfd-api, Redis and wrk (from /proc and getrusage), and the
  rate 2 idle cores would sustain at that cost: a shared machine's other load stretches
  wall-clock rates far more than CPU per request;
- latency at a fixed rate: an open-loop generator (a second process, below) sends `--rate`
  requests/s on schedule and times each from its scheduled start (so a stall counts against
  every request queued behind it), p50/p99/max.
Figures depend on the machine's load: the one in docs/benchmarks.md is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEY = "bench-key-0123456789abcdef"


def _plant(settings, n: int) -> list[str]:
    from worker.service.cache import VerdictCache
    from worker.types import FaceResult, ModelInfo, Verdict

    cache = VerdictCache.from_settings(settings)
    model = ModelInfo("convnextv2-atto-dfd", "2026.11.1", "ab" * 32, demo=True)
    ids = [f"bench-{i:06d}" for i in range(n)]
    pipe = cache.client.pipeline(transaction=False)
    for i, rid in enumerate(ids):
        faces = [FaceResult(k, k * 1.1, [100.0 + k, 80.0, 300.0, 330.0], 0.99, (i * 7 + k) % 100 / 100) for k in range(10)]
        v = Verdict(rid, f"https://cdn.example.com/videos/{rid}.mp4", "fake", score=0.8, threshold=0.5,
                    aggregation="confident_mean", model=model, faces=faces, frames_sampled=10, frames_with_faces=10,
                    content_sha256=f"{i:064x}", timings_ms={"fetch": 2.0, "decode": 300.0}, metadata={"user": i})
        from worker.service.messages import encode_verdict

        pipe.set(f"{settings.redis_key_prefix}:verdict:req:{rid}", encode_verdict(v), ex=3600)
        if len(pipe) >= 500:
            pipe.execute()
    pipe.execute()
    return ids


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children, from /proc."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _cpu_s(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def _wrk(url: str, path_lua: str | None, seconds: int, servers: dict[str, int], connections: int = 16) -> dict:
    """wrk's figures, plus the CPU milliseconds per request each server process and wrk spent:
    a shared machine's other load stretches wall-clock rates far more than CPU per request."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if path_lua:
        cmd += ["-s", path_lua]
    before = {name: _cpu_s(pid) for name, pid in servers.items()}
    rusage = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    cpu_ms = {name: round((_cpu_s(pid) - before[name]) * 1000 / requests, 3) for name, pid in servers.items()}
    cpu_ms["wrk"] = round((after.ru_utime + after.ru_stime - rusage.ru_utime - rusage.ru_stime) * 1000 / requests, 3)
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "requests": requests, "cpu_ms_per_request": cpu_ms,
            # what 2 otherwise idle cores would sustain if CPU were the only limit (server + Redis + wrk)
            "cpu_bound_rps_on_2_cores": round(2000 / sum(cpu_ms.values()))}


# --- the open-loop generator (run as its own process: python -m benchmarks.api --open-loop ...) ----


async def _open_loop(host: str, port: int, ids: list[str], rate: float, seconds: float, connections: int) -> dict:
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))
    t0 = time.perf_counter() + 0.5

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        for i in counter:
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            rid = ids[i % len(ids)]
            writer.write(f"GET /v1/verdicts/{rid} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - scheduled)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - max(start, t0)
    latencies.sort()
    q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000  # noqa: E731
    return {"rate": rate, "sent": len(latencies), "achieved_rps": len(latencies) / elapsed, "errors": errors,
            "p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": latencies[-1] * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verdicts", type=int, default=10000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--open-loop", nargs=2, metavar=("URL", "IDS_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.open_loop:
        url, ids_file = args.open_loop
        host, port = url.split("//")[1].split(":")
        ids = json.loads(Path(ids_file).read_text())
        random.Random(1).shuffle(ids)
        print(json.dumps(asyncio.run(_open_loop(host, int(port), ids, args.rate, args.seconds, 32))))
        return 0

    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    from api.keys import hash_key
    from worker.localstack import create_topics, free_port, settings_env, start_broker, start_redis, stop_process, wait_port
    from worker.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="dfd-bench-api-"))
    procs = []
    try:
        broker_port, redis_port, api_port = free_port(), free_port(), free_port()
        procs.append(start_broker(broker_port, work / "tansu.log"))
        procs.append(start_redis(redis_port, work / "redis.log"))
        settings = Settings(
            kafka_bootstrap=f"127.0.0.1:{broker_port}", redis_url=f"redis://127.0.0.1:{redis_port}/0",
            api_port=api_port, api_keys_file=str(work / "keys"), api_rate_limit_per_s=1e9, api_rate_burst=10**9,
            kafka_session_timeout_ms=6000, log_level="warning",
        )
        create_topics(settings.kafka_bootstrap, {settings.requests_topic: 4, settings.results_topic: 4})
        (work / "keys").write_text(f"{hash_key(KEY)} bench read\n")
        ids = _plant(settings, args.verdicts)
        (work / "ids.json").write_text(json.dumps(ids))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DFD_")}
        env.update(settings_env(settings))
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
        api = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--workers", str(args.workers)],
                               env=env, stdout=open(work / "api.log", "wb"), stderr=subprocess.STDOUT)
        procs.append(api)
        wait_port("127.0.0.1", api_port, 120, api)  # workers > 1 start slowly on a busy machine
        url = f"http://127.0.0.1:{api_port}"
        lua = work / "ids.lua"
        lua.write_text(
            f'local n = {len(ids)}\nmath.randomseed(1)\n'
            f'request = function()\n  return wrk.format("GET", string.format("/v1/verdicts/bench-%06d", math.random(0, n - 1)),'
            f' {{["Authorization"] = "Bearer {KEY}"}})\nend\n'
        )
        servers = {"api": api.pid, "redis": procs[1].pid}
        _wrk(url + "/healthz", None, 2, servers)  # warm up
        baseline = _wrk(url + "/healthz", None, args.seconds, servers)
        lookups = _wrk(url + "/v1/verdicts/x", str(lua), args.seconds, servers)
        paced = json.loads(subprocess.run(
            [sys.executable, "-m", "benchmarks.api", "--open-loop", url, str(work / "ids.json"),
             "--rate", str(args.rate), "--seconds", str(args.seconds)],
            capture_output=True, text=True, check=True, env=env).stdout)
        report = {
            "cores": os.cpu_count(), "load_average_1m": os.getloadavg()[0], "uvicorn_workers": args.workers,
            "baseline_healthz": baseline, "lookup_by_id": lookups,
            "lookup_vs_healthz": round(lookups["rps"] / baseline["rps"], 3),
            "lookup_vs_healthz_cpu": round(sum(lookups["cpu_ms_per_request"].values()) / sum(baseline["cpu_ms_per_request"].values()), 2),
            "paced": paced,
        }
        print(json.dumps(report, indent=2))
        return 0
    finally:
        for p in reversed(procs):
            stop_process(p.pid)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
