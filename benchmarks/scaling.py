"""Scale events and Redis outages: what a consumer of verdicts sees while workers come and go.

    python -m benchmarks.scaling [--rate 3] [--step-s 20] [--modes range,cooperative-sticky] [--outage-s 20] [--full-scan] [--write docs/benchmarks.md]

- scaling, per assignor mode: a private Tansu broker and Redis, a requests topic of 6
  partitions, requests paced at `--rate` per second while the group goes 1 -> 2 -> 3 -> 2 -> 1
  workers, one step every `--step-s` seconds (scale-down is SIGTERM: the worker drains and
  leaves, as Kubernetes does it). Figures: request-to-verdict latency p50/p99 (producer ack
  to the verdict on the results topic), the longest gap between two verdicts on the results
  topic (at a steady rate it is about 1/rate; a stop-the-world rebalance shows as a hole),
  and duplicate verdicts. Modes: `range` (eager, the kafka-python default), `cooperative-sticky`
  (incremental), `cooperative-sticky+static` (plus `group_instance_id` per worker).
- redis outage: one worker and one materializer, requests paced for the whole run, Redis
  stopped (saving its data) for `--outage-s` seconds in the middle, then started again. The
  worker writes its verdicts under one key prefix, the materializer under another, so one run
  gives the completeness of both: the share of request ids that answer from Redis afterwards.

Workers are `dfd-worker run` on small 176x144 clips with 4 frames each, one decode and one
ONNX thread, to fit three workers on a small machine; each clip is scanned once before the
clock starts and then answered from the content-hash cache, so requests are cheap and the
figures show the rebalances, not CPU contention. `--full-scan` runs `benchmarks.streaming`'s
worker instead (content-hash lookup off: every request decoded and analysed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.detection import bench_bundle, write_section
from benchmarks.streaming import small_clips

PARTITIONS = 6  # divides evenly among 1, 2 and 3 workers
MODES = ("range", "cooperative-sticky", "cooperative-sticky+static")


class Stack:
    """A private Tansu broker and redis-server for one run."""

    def __init__(self, workdir: Path):
        from worker.localstack import free_port, start_broker, start_redis

        if not shutil.which("redis-server"):
            raise SystemExit("this benchmark stops and restarts its own Redis: install redis-server")
        self.workdir = workdir
        self.broker_port = free_port()
        self.broker = start_broker(self.broker_port, workdir / "tansu.log")
        self.redis_port = free_port()
        self.redis = start_redis(self.redis_port, workdir / "redis" / "redis.log")

    def settings(self, tag: str, **overrides):
        from worker.localstack import create_topics
        from worker.settings import Settings

        clips = small_clips()
        settings = Settings(
            kafka_bootstrap=f"127.0.0.1:{self.broker_port}", redis_url=f"redis://127.0.0.1:{self.redis_port}/0",
            requests_topic=f"req-{tag}", results_topic=f"res-{tag}", dead_letter_topic=f"dlq-{tag}",
            group_id=f"grp-{tag}", materializer_group_id=f"mat-{tag}", redis_key_prefix=f"b{tag}",
            model_dir=str(bench_bundle()), allowed_roots=(str(clips[0].parent),),
            kafka_session_timeout_ms=6000, kafka_heartbeat_interval_ms=1000, frames_per_video=4,
            decode_threads=1, intra_op_threads=1, http_port=0, log_level="info",
        ).replace(**overrides)
        create_topics(settings.kafka_bootstrap, {settings.requests_topic: PARTITIONS, settings.results_topic: 2,
                                                 settings.dead_letter_topic: 1})
        return settings

    def stop_redis(self) -> None:
        import redis

        redis.Redis(port=self.redis_port).shutdown(save=True)  # like a failover that keeps the data
        self.redis.wait(10)

    def start_redis(self) -> None:
        from worker.localstack import start_redis

        self.redis = start_redis(self.redis_port, self.workdir / "redis" / "redis.log")

    def close(self) -> None:
        from worker.localstack import stop_process

        stop_process(self.broker.pid)
        stop_process(self.redis.pid)


def _spawn(settings, args: list[str], log: Path, **env_extra) -> subprocess.Popen:
    from worker.localstack import settings_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("DFD_")}
    env.update(settings_env(settings))
    env.update(env_extra)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Load:
    """Submits requests at a steady rate and notes when each verdict arrives on the results topic."""

    def __init__(self, settings, rate: float):
        from kafka import KafkaConsumer, TopicPartition

        from worker.service.kafka_clients import make_producer

        self.settings, self.interval = settings, 1.0 / rate
        self.clips = small_clips()
        self.producer = make_producer(settings)
        self.reader = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        tps = [TopicPartition(settings.results_topic, p) for p in range(2)]
        self.reader.assign(tps)
        self.reader.seek_to_beginning(*tps)
        self.sent: dict[str, float] = {}
        self.arrived: dict[str, float] = {}
        self.copies: dict[str, int] = {}
        self.n = 0
        self.next_at = time.perf_counter()

    def submit_one(self, tag: str) -> str:
        from worker.service.messages import encode_request
        from worker.types import ScanRequest

        req = ScanRequest(f"{tag}-{self.n}", str(self.clips[self.n % len(self.clips)]))
        self.n += 1
        self.producer.send(self.settings.requests_topic, key=req.request_id.encode(), value=encode_request(req)).get(30)
        self.sent[req.request_id] = time.perf_counter()
        return req.request_id

    def poll(self, timeout_ms: int) -> None:
        for records in self.reader.poll(timeout_ms=timeout_ms).values():
            now = time.perf_counter()
            for r in records:
                rid = r.key.decode()
                self.copies[rid] = self.copies.get(rid, 0) + 1
                self.arrived.setdefault(rid, now)

    def run_for(self, seconds: float, tag: str) -> None:
        """Keep submitting at the rate (and reading verdicts) for `seconds`."""
        end = time.perf_counter() + seconds
        while (now := time.perf_counter()) < end:
            if now >= self.next_at:
                self.submit_one(tag)
                self.next_at += self.interval
                continue
            self.poll(max(1, int((min(self.next_at, end) - now) * 1000)))

    def drain(self, timeout_s: float) -> None:
        deadline = time.perf_counter() + timeout_s
        while set(self.sent) - set(self.arrived) and time.perf_counter() < deadline:
            self.poll(200)

    def close(self) -> None:
        self.producer.close()
        self.reader.close()


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def worker_module(full_scan: bool) -> list[str]:
    """`dfd-worker run` itself (repeated clips answered from the content-hash cache: cheap requests,
    so the figures show the rebalances rather than CPU contention), or the streaming benchmark's
    worker with that lookup off (every request decoded and analysed)."""
    return ["benchmarks.streaming", "--phase", "worker"] if full_scan else ["worker.service.runner"]


def run_scaling(stack: Stack, mode: str, rate: float, step_s: float, workdir: Path, full_scan: bool = False) -> dict:
    assignor, static = mode.split("+")[0], mode.endswith("+static")
    settings = stack.settings(uuid.uuid4().hex[:6], kafka_assignor=assignor)
    workers: list[subprocess.Popen] = []

    def start_worker() -> None:
        k = len(workers) + 1
        extra = {"DFD_KAFKA_GROUP_INSTANCE_ID": f"bench-worker-{k}"} if static else {}
        workers.append(_spawn(settings, worker_module(full_scan), workdir / f"{mode}-worker{k}.log", **extra))

    load = Load(settings, rate)
    events: list[tuple[float, str]] = []
    try:
        start_worker()
        # group join, the first ONNX runs and (cache mode) one scan of each clip are not a scale event
        warm = [load.submit_one("warm") for _ in range(1 if full_scan else len(load.clips))]
        while set(warm) - set(load.arrived):
            load.poll(200)
        t0 = time.perf_counter()
        load.next_at = t0
        load.run_for(step_s, "steady")
        for step, action in enumerate(("up", "up", "down", "down")):
            events.append((time.perf_counter() - t0, f"{len(workers)}->{len(workers) + (1 if action == 'up' else -1)}"))
            if action == "up":
                start_worker()
            else:
                victim = workers.pop()
                # SIGTERM, as Kubernetes sends it; the load goes on while it drains
                victim.send_signal(signal.SIGTERM)
            load.run_for(step_s, f"s{step}")
        t_end = time.perf_counter()
        load.drain(120)
    finally:
        load.close()
        for w in workers:
            _stop(w)
    def figures(ids: list[str]) -> dict:
        arrivals = sorted(load.arrived[r] for r in ids if r in load.arrived)
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        longest = max(range(len(gaps)), key=gaps.__getitem__)
        latencies = [(load.arrived[r] - load.sent[r]) * 1000 for r in ids if r in load.arrived]
        return {"requests": len(ids), "answered": len(latencies), "latency_p50_ms": statistics.median(latencies),
                "latency_p99_ms": _pct(latencies, 0.99), "latency_max_ms": max(latencies),
                "longest_gap_s": gaps[longest], "longest_gap_at_s": arrivals[longest] - t0}

    timed = [r for r in load.sent if not r.startswith("warm")]
    return {
        "mode": mode, "seconds": t_end - t0, **figures(timed),
        # the first step, one worker and no scale event yet: the same mode's baseline
        "steady": figures([r for r in timed if r.startswith("steady")]),
        "duplicates": sum(c - 1 for r, c in load.copies.items() if not r.startswith("warm")),
        "events": events,
    }


def run_outage(stack: Stack, rate: float, outage_s: float, workdir: Path, full_scan: bool = False) -> dict:
    from worker.service.cache import VerdictCache

    settings = stack.settings(uuid.uuid4().hex[:6])
    worker = _spawn(settings, worker_module(full_scan), workdir / "outage-worker.log")
    # the materializer writes under its own prefix, so the worker's own writes are counted apart
    mat_prefix = settings.redis_key_prefix + "m"
    materializer = _spawn(settings, ["worker.service.materializer"], workdir / "outage-materializer.log",
                          DFD_REDIS_KEY_PREFIX=mat_prefix)
    load = Load(settings, rate)
    try:
        warm = load.submit_one("warm")
        while warm not in load.arrived:
            load.poll(200)
        load.next_at = time.perf_counter()
        load.run_for(outage_s / 2, "before")
        stack.stop_redis()
        load.run_for(outage_s, "during")
        stack.start_redis()
        load.run_for(outage_s / 2, "after")
        load.drain(120)
        ids = list(load.sent)
        worker_cache = VerdictCache.from_settings(settings)
        mat_cache = VerdictCache.from_settings(settings.replace(redis_key_prefix=mat_prefix))
        deadline = time.monotonic() + 60  # the materializer catches up after Redis is back
        while time.monotonic() < deadline and any(mat_cache.get(r) is None for r in ids):
            time.sleep(0.5)
        time.sleep(2.5)  # past the cache's outage back-off before reading
        worker_has = sum(worker_cache.get(r) is not None for r in ids)
        mat_has = sum(mat_cache.get(r) is not None for r in ids)
    finally:
        load.close()
        _stop(worker)
        _stop(materializer)
    return {"requests": len(ids), "answered_on_topic": len(load.arrived), "outage_s": outage_s,
            "in_redis_worker_only": worker_has, "in_redis_materializer": mat_has}


def report(scaling: list[dict], outage: dict | None, rate: float, step_s: float, full_scan: bool) -> str:
    names = {"range": "eager (`range`, the old default)", "cooperative-sticky": "cooperative (`cooperative-sticky`, the new default)",
             "cooperative-sticky+static": "cooperative + static membership"}
    lines = [
        f"Requests paced at {rate:g}/s on small 176x144 carphone clips (4 frames; "
        + ("content-hash lookup off: every request decoded and analysed), " if full_scan else
           "each of the 24 clips scanned once before the clock starts, then answered from the content-hash "
           "cache: cheap requests, so the figures show the rebalances rather than CPU contention), ")
        + 
        f"a {PARTITIONS}-partition requests topic, workers 1 -> 2 -> 3 -> 2 -> 1, one step every {step_s:g} s "
        "(scale-down by SIGTERM: drain and leave). Tansu broker, Redis and every worker on one shared 2-core "
        "machine (one decode and one ONNX thread per worker), so absolute latencies include CPU contention; "
        "compare the modes, measured one after the other in the same run.",
        "",
        "| Assignor | phase | latency p50 / p99 / max | longest gap in verdicts (requests every "
        f"{1 / rate:.2f} s) | duplicates | answered |",
        "|---|---|---|---|---|---|",
    ]
    for r in scaling:
        for phase, f in (("first step, 1 worker, no scale event", r["steady"]), ("whole run, 4 scale events", r)):
            lines.append(
                f"| {names.get(r['mode'], r['mode'])} | {phase} | {f['latency_p50_ms']:.0f} / {f['latency_p99_ms']:.0f} / {f['latency_max_ms']:.0f} ms "
                f"| {f['longest_gap_s']:.1f} s (at {f['longest_gap_at_s']:.0f} s) | {r['duplicates'] if f is r else ''} | {f['answered']}/{f['requests']} |"
            )
    if scaling:
        lines += ["", "Scale steps at (s): " + ", ".join(f"{t:.0f} ({what})" for t, what in scaling[0]["events"]) + "."]
    if outage:
        lines += [
            "",
            f"Redis outage: one worker and one materializer, {outage['requests']} requests paced at {rate:g}/s, "
            f"Redis stopped for {outage['outage_s']:g} s mid-run (data saved, then restarted):",
            "",
            "| Writer | request ids answering from Redis afterwards |",
            "|---|---|",
            f"| the worker's own write only | {outage['in_redis_worker_only']}/{outage['requests']} "
            f"({outage['in_redis_worker_only'] / outage['requests']:.1%}) |",
            f"| the materializer | {outage['in_redis_materializer']}/{outage['requests']} "
            f"({outage['in_redis_materializer'] / outage['requests']:.1%}) |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=3.0, help="requests per second")
    ap.add_argument("--step-s", type=float, default=20.0, help="seconds between scale steps")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--outage-s", type=float, default=20.0, help="Redis outage length (0: skip that part)")
    ap.add_argument("--full-scan", action="store_true",
                    help="decode and analyse every request (content-hash lookup off) instead of cache hits")
    ap.add_argument("--write", type=Path, help="Markdown file whose 'Scale events and Redis outages' section gets the figures")
    args = ap.parse_args(argv)
    bench_bundle()
    small_clips()
    with tempfile.TemporaryDirectory(prefix="dfd-scaling-") as tmp:
        stack = Stack(Path(tmp))
        try:
            scaling = []
            for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
                scaling.append(run_scaling(stack, mode, args.rate, args.step_s, Path(tmp), args.full_scan))
                print(json.dumps(scaling[-1]), file=sys.stderr, flush=True)
            outage = run_outage(stack, args.rate, args.outage_s, Path(tmp), args.full_scan) if args.outage_s > 0 else None
            print(json.dumps(outage), file=sys.stderr, flush=True)
        finally:
            stack.close()
    text = report(scaling, outage, args.rate, args.step_s, args.full_scan)
    print(text)
    if args.write:
        cmd = f"python -m benchmarks.scaling --rate {args.rate:g} --step-s {args.step_s:g} --modes {args.modes} --outage-s {args.outage_s:g}{' --full-scan' if args.full_scan else ''}"
        write_section(args.write, "Scale events and Redis outages", f"Measured {time.strftime('%Y-%m-%d')} with `{cmd}`.\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
