"""Every Prometheus metric of the worker service, declared once with its meaning.

They live in prometheus_client's default registry, which /metrics serves.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

MESSAGES_CONSUMED = Counter("dfd_messages_consumed_total", "Request messages read from the requests topic.")
VERDICTS = Counter(
    "dfd_verdicts_total", "Verdicts published to the results topic, by label and whether they came from the cache.",
    ["label", "cached"],
)
FAILURES = Counter(
    "dfd_failures_total",
    "Failures by reason: dead_letter_<code>, scan_error_<code>, publish, publish_fatal, commit, cache_read, "
    "cache_write, cache_write_dropped, analyze, attempt_<code> (a handling attempt that crashed or timed out), "
    "attempts_unavailable (Redis could not count an attempt).",
    ["reason"],
)
DEAD_LETTERS = Counter("dfd_dead_letters_total", "Messages sent to the dead-letter topic, by cause.", ["code"])
STAGE_SECONDS = Histogram(
    "dfd_stage_seconds",
    "Time per stage: load (fetch+hash+decode, per video), analyze (per batch), publish (produce to ack), "
    "cache_write, end_to_end (message received to verdict acknowledged).",
    ["stage"],
    buckets=_STAGE_BUCKETS,
)
BATCH_VIDEOS = Histogram(
    "dfd_batch_videos", "Videos per analyze call (micro-batch size).", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
)
BATCH_FRAMES = Histogram(
    "dfd_batch_frames", "Frames per analyze call.", buckets=(1, 4, 8, 16, 32, 64, 128, 256, 512)
)
IN_FLIGHT = Gauge(
    "dfd_in_flight", "Requests received and not yet committed, answered or not (the bounded window: what a crash would redo)."
)
PAUSED = Gauge("dfd_partitions_paused", "1 while the consumer's partitions are paused because the window is full.")
CONSUMER_LAG = Gauge(
    "dfd_consumer_lag", "Messages behind the partition's high-water mark, per assigned partition.", ["partition"]
)
COMMITS = Counter("dfd_offset_commits_total", "Successful offset commits.")
REBALANCES = Counter("dfd_rebalances_total", "Partition assignment changes, by kind.", ["kind"])
CACHE_HITS = Counter("dfd_cache_hits_total", "Requests answered from the Redis verdict cache by content hash.")
READY = Gauge("dfd_ready", "1 when models are loaded and the broker is reachable.")
VERDICTS_REPLAYED = Counter(
    "dfd_verdicts_replayed_total",
    "Redelivered requests answered by republishing the verdict already known for the request id and model, "
    "without fetching or decoding.",
)
# the materializer (`dfd-worker materialize`, worker/service/materializer.py); it also counts
# dfd_offset_commits_total, dfd_rebalances_total and dfd_failures_total{reason="cache_write"|"commit"}
MATERIALIZED = Counter("dfd_materialized_total", "Verdicts copied from the results topic into Redis (acknowledged writes).")
MATERIALIZER_SKIPPED = Counter(
    "dfd_materializer_skipped_total", "Results-topic records that are not verdicts, by reason: committed past, never written.",
    ["reason"],
)
MATERIALIZER_PAUSED = Gauge(
    "dfd_materializer_paused", "1 while the materializer waits for Redis (partitions paused, nothing committed past it)."
)
