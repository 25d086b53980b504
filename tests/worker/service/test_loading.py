"""The load step without a broker: replay of known verdicts, attempts, poison, handling age."""

import threading
import time
import uuid

import pytest
import redis
from prometheus_client import REGISTRY

from tests.worker.service.steps import MODEL, TP, request, verdict
from worker.service.attempts import AttemptCounter, attempts_key
from worker.service.loading import LoadStep
from worker.service.work import Work
from worker.types import ModelInfo


class ScriptedScanner:
    """Answers each load with the next verdict of a script (or blocks until released)."""

    info = MODEL

    def __init__(self, answers=(), block: threading.Event | None = None):
        self.answers = list(answers)
        self.block = block
        self.loads = 0

    def load(self, req, cache_lookup=None):
        self.loads += 1
        if self.block is not None:
            self.block.wait(10)
        return self.answers.pop(0)


class Sink:
    def __init__(self):
        self.published, self.dead, self.batched = [], [], []
        self.event = threading.Event()

    def publish(self, work, v):
        self.published.append((work, v))
        self.event.set()

    def dead_letter(self, work, rejected):
        self.dead.append((work, rejected))
        self.event.set()


def _step(scanner, sink, known=None, attempts=None, max_attempts=3):
    return LoadStep(
        scanner, threads=2, max_attempts=max_attempts, known_verdict=lambda rid: known, content_lookup=lambda sha: None,
        attempts=attempts, to_batcher=lambda w, v: sink.batched.append(w), publish=sink.publish,
        dead_letter=sink.dead_letter,
    )


def _work(offset=7):
    w = Work(TP("req", 0), offset, b"k", b"{}")
    w.request = request()
    return w


def test_known_verdict_for_the_same_request_and_model_is_replayed_without_loading():
    before = REGISTRY.get_sample_value("dfd_verdicts_replayed_total") or 0.0
    scanner, sink = ScriptedScanner(), Sink()
    known = verdict(created_at=123.0)
    step = _step(scanner, sink, known=known)
    step.submit(_work())
    assert sink.event.wait(5)
    step.close()
    assert scanner.loads == 0
    assert sink.published[0][1] is known  # republished as it is
    assert REGISTRY.get_sample_value("dfd_verdicts_replayed_total") == before + 1


@pytest.mark.parametrize("known", [
    verdict(model=ModelInfo(name="m", version="2", sha256="cd" * 32, trained=True, demo=False)),  # another model
    verdict(uri="/other.mp4"),  # the id reused for another video
    verdict(label="error", error_code="timeout"),  # a failed attempt is no answer
])
def test_other_known_verdicts_are_not_replayed(known):
    scanner, sink = ScriptedScanner([verdict(label="fake")]), Sink()
    step = _step(scanner, sink, known=known)
    step.submit(_work())
    assert sink.event.wait(5)
    step.close()
    assert scanner.loads == 1 and sink.published[0][1].label == "fake"


def test_crashed_or_timed_out_attempts_are_retried_then_dead_lettered_as_poison():
    answers = [verdict(label="error", error_code="decoder_crashed"), verdict(label="error", error_code="timeout"),
               verdict(label="error", error_code="decoder_crashed")]
    scanner, sink = ScriptedScanner(answers), Sink()
    step = _step(scanner, sink, max_attempts=3)
    step.submit(_work())
    assert sink.event.wait(5)
    step.close()
    assert scanner.loads == 3 and sink.published == []
    [(_, rejected)] = sink.dead
    assert rejected.code == "poison" and "3 handling attempts" in rejected.reason and "decoder_crashed" in rejected.reason


def test_a_retry_that_succeeds_is_published():
    scanner, sink = ScriptedScanner([verdict(label="error", error_code="timeout"), verdict(label="real")]), Sink()
    step = _step(scanner, sink)
    step.submit(_work())
    assert sink.event.wait(5)
    step.close()
    assert scanner.loads == 2 and [v.label for _, v in sink.published] == ["real"] and sink.dead == []


def test_handling_age_is_visible_while_a_load_hangs():
    release = threading.Event()
    scanner, sink = ScriptedScanner([verdict()], block=release), Sink()
    step = _step(scanner, sink)
    assert step.oldest_started() is None
    t0 = time.monotonic()
    step.submit(_work())
    deadline = time.monotonic() + 5
    while step.oldest_started() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert t0 <= step.oldest_started() <= time.monotonic()
    release.set()
    assert sink.event.wait(5)
    step.close()
    assert step.oldest_started() is None


@pytest.mark.broker
def test_attempts_counted_in_redis_across_restarts_make_poison(stack):
    client = redis.Redis.from_url(stack.redis_url)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    counter = AttemptCounter(client, prefix, ttl_s=60)
    key = attempts_key(prefix, "req", 0, 7)
    for n in (1, 2, 3):  # three workers started it and died
        assert counter.start("req", 0, 7) == n
    assert 0 < client.ttl(key) <= 60
    scanner, sink = ScriptedScanner([verdict()]), Sink()
    step = _step(scanner, sink, attempts=counter, max_attempts=3)
    step.submit(_work(offset=7))
    assert sink.event.wait(5)
    step.close()
    assert scanner.loads == 0  # not tried a fourth time
    assert sink.dead[0][1].code == "poison"
    counter.clear("req", 0, 7)
    assert client.get(key) is None


def test_attempts_without_redis_fall_back_to_this_process():
    class CountingRedis(redis.Redis):
        tries = 0

        def pipeline(self, *args, **kwargs):
            CountingRedis.tries += 1
            return super().pipeline(*args, **kwargs)

    counter = AttemptCounter(CountingRedis(port=1, socket_connect_timeout=0.2), "x", ttl_s=60)
    assert counter.start("req", 0, 1) is None
    assert counter.start("req", 0, 2) is None
    assert CountingRedis.tries == 1  # skipped during the outage back-off: no socket timeout per request
    scanner, sink = ScriptedScanner([verdict()]), Sink()
    step = _step(scanner, sink, attempts=counter)
    step.submit(_work())
    assert sink.event.wait(5)
    step.close()
    assert scanner.loads == 1 and sink.published  # Redis down never blocks work
