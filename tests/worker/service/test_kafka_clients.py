"""Kafka client configuration from settings: security, manual commits, group timeouts, assignor and
static membership (and cooperative rebalancing against the real broker)."""

import pytest

from worker.service.kafka_clients import consumer_config, producer_config
from worker.settings import Settings


def test_plaintext_defaults_commit_manually_from_earliest():
    cfg = consumer_config(Settings(kafka_bootstrap="a:9092, b:9093", group_id="g", kafka_session_timeout_ms=6000))
    assert cfg["bootstrap_servers"] == ["a:9092", "b:9093"]
    assert cfg["enable_auto_commit"] is False and cfg["auto_offset_reset"] == "earliest"
    assert cfg["group_id"] == "g" and cfg["session_timeout_ms"] == 6000
    assert cfg["security_protocol"] == "PLAINTEXT"
    assert not any(k.startswith(("sasl", "ssl")) for k in cfg)


def test_sasl_ssl_settings_reach_the_clients():
    s = Settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="u",
        kafka_sasl_password="p", kafka_ssl_cafile="/ca.pem", kafka_ssl_certfile="/c.pem", kafka_ssl_keyfile="/k.pem",
    )
    for cfg in (consumer_config(s), producer_config(s)):
        assert cfg["security_protocol"] == "SASL_SSL"
        assert (cfg["sasl_mechanism"], cfg["sasl_plain_username"], cfg["sasl_plain_password"]) == ("SCRAM-SHA-512", "u", "p")
        assert (cfg["ssl_cafile"], cfg["ssl_certfile"], cfg["ssl_keyfile"]) == ("/ca.pem", "/c.pem", "/k.pem")
    assert producer_config(s)["acks"] == "all"


def test_ssl_without_sasl_has_no_sasl_options():
    cfg = producer_config(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile="/ca.pem"))
    assert cfg["ssl_cafile"] == "/ca.pem" and not any(k.startswith("sasl") for k in cfg)


def test_cooperative_sticky_is_the_default_assignor_and_membership_is_dynamic():
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor

    cfg = consumer_config(Settings())
    assert cfg["partition_assignment_strategy"] == [CooperativeStickyAssignor]
    assert "group_instance_id" not in cfg


def test_eager_assignor_and_static_membership_from_settings():
    from kafka.coordinator.assignors.range import RangePartitionAssignor

    cfg = consumer_config(Settings(kafka_assignor="range", kafka_group_instance_id="dfd-worker-7c9d-x2k4p"))
    assert cfg["partition_assignment_strategy"] == [RangePartitionAssignor]
    assert cfg["group_instance_id"] == "dfd-worker-7c9d-x2k4p"


def test_unknown_assignor_is_refused_with_the_choices():


    with pytest.raises(ValueError, match="cooperative-sticky"):
        consumer_config(Settings(kafka_assignor="cooperative"))


class _Recorder:
    """A rebalance listener that notes what each hook was given."""

    def __init__(self):
        from kafka import ConsumerRebalanceListener

        events = self.events = []

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                events.append(("revoked", sorted(tp.partition for tp in revoked)))

            def on_partitions_assigned(self, assigned):
                events.append(("assigned", sorted(tp.partition for tp in assigned)))

        self.listener = Listener()


def _poll_until(consumers, done, timeout_s=120):
    """Poll each consumer from its own thread (as each worker does) until `done()` or the timeout."""
    import threading
    import time

    stop = threading.Event()

    def loop(c):
        while not stop.is_set():
            c.poll(timeout_ms=100)

    threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in consumers]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not done():
            time.sleep(0.1)
        return done()
    finally:
        stop.set()
        for t in threads:
            t.join(10)


@pytest.mark.broker
def test_cooperative_rebalance_on_tansu_revokes_only_the_partitions_that_move(stack):
    from worker.service.kafka_clients import make_consumer

    settings = stack.settings(partitions=4)
    first, second = _Recorder(), _Recorder()
    a = make_consumer(settings)
    b = make_consumer(settings)
    try:
        a.subscribe([settings.requests_topic], listener=first.listener)
        assert _poll_until([a], lambda: len(a.assignment()) == 4)
        b.subscribe([settings.requests_topic], listener=second.listener)
        assert _poll_until([a, b], lambda: len(a.assignment()) == 2 and len(b.assignment()) == 2), (first.events, second.events)
        kept = {tp.partition for tp in a.assignment()}
        moved = {tp.partition for tp in b.assignment()}
        assert kept | moved == {0, 1, 2, 3} and not kept & moved
        # the first member gave up only what moved, and was never told to revoke the rest
        revoked = [parts for kind, parts in first.events if kind == "revoked"]
        assert revoked == [sorted(moved)], first.events
        assert second.events == [("assigned", sorted(moved))]
    finally:
        a.close(autocommit=False)
        b.close(autocommit=False)


@pytest.mark.broker
def test_tansu_accepts_a_static_member(stack):
    """Static membership (group_instance_id, JoinGroup v5) is accepted and assigned partitions.
    (Tansu's second cooperative round with static members was sometimes slow here: tens of s.)"""
    from worker.service.kafka_clients import make_consumer

    settings = stack.settings(partitions=4, kafka_group_instance_id="member-a")
    recorder = _Recorder()
    consumer = make_consumer(settings)
    try:
        assert consumer.config["group_instance_id"] == "member-a"
        consumer.subscribe([settings.requests_topic], listener=recorder.listener)
        assert _poll_until([consumer], lambda: len(consumer.assignment()) == 4)
        assert recorder.events == [("assigned", [0, 1, 2, 3])]
    finally:
        consumer.close(autocommit=False)
