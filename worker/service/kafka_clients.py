"""kafka-python consumer, producer and admin clients configured from Settings (bootstrap, SASL/SSL,
timeouts, partition assignor, static membership)."""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

from worker.settings import Settings


# settings.kafka_assignor -> kafka-python assignor; only cooperative-sticky is incremental (KIP-429)
ASSIGNORS = {
    "cooperative-sticky": CooperativeStickyAssignor,
    "range": RangePartitionAssignor,
    "roundrobin": RoundRobinPartitionAssignor,
    "sticky": StickyPartitionAssignor,
}


def assignor(settings: Settings) -> type:
    try:
        return ASSIGNORS[settings.kafka_assignor]
    except KeyError:
        raise ValueError(
            f"DFD_KAFKA_ASSIGNOR={settings.kafka_assignor!r} is not one of {', '.join(sorted(ASSIGNORS))}"
        ) from None


def common_config(settings: Settings) -> dict[str, Any]:
    """Connection and security options shared by every client."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()],
        "security_protocol": settings.kafka_security_protocol,
        "reconnect_backoff_ms": 100,
        "reconnect_backoff_max_ms": 2000,
        "request_timeout_ms": 15000,
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        cfg["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        cfg["sasl_plain_username"] = settings.kafka_sasl_username
        cfg["sasl_plain_password"] = settings.kafka_sasl_password
    if settings.kafka_security_protocol.endswith("SSL"):
        cfg["ssl_check_hostname"] = True
        if settings.kafka_ssl_cafile:
            cfg["ssl_cafile"] = settings.kafka_ssl_cafile
        if settings.kafka_ssl_certfile:
            cfg["ssl_certfile"] = settings.kafka_ssl_certfile
        if settings.kafka_ssl_keyfile:
            cfg["ssl_keyfile"] = settings.kafka_ssl_keyfile
    return cfg


def consumer_config(settings: Settings) -> dict[str, Any]:
    """Group consumer: manual commits only (the offset tracker decides), earliest on a new group."""
    cfg = {
        **common_config(settings),
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        # short session/heartbeat: joins in seconds, and a killed worker's partitions move quickly
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka_heartbeat_interval_ms,
        "max_poll_interval_ms": settings.kafka_max_poll_interval_ms,
        "max_partition_fetch_bytes": max(1 << 20, settings.max_message_bytes * 4),
        # one assignor, never a list: a group cannot mix eager and cooperative members
        "partition_assignment_strategy": [assignor(settings)],
    }
    if settings.kafka_group_instance_id:
        cfg["group_instance_id"] = settings.kafka_group_instance_id
    return cfg


def producer_config(settings: Settings) -> dict[str, Any]:
    """Durable producer: acks from all in-sync replicas, retries, ordering kept per key."""
    return {
        **common_config(settings),
        "acks": "all",
        "retries": 5,
        "max_in_flight_requests_per_connection": 1,
        "linger_ms": 5,
    }


def make_consumer(settings: Settings, **overrides: Any) -> KafkaConsumer:
    return KafkaConsumer(**{**consumer_config(settings), **overrides})


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    return KafkaProducer(**{**producer_config(settings), **overrides})
