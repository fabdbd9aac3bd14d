"""Prometheus metrics of the daemon, the RAPI client and eventd.

Labels are bounded sets (queue names, outcomes, RAPI operation names): never an instance
name, job id or URL.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES = Counter(
    "dispatcher_messages",
    "Messages handled, by queue and outcome (applied, duplicate, ignored, dead_lettered, retried)",
    ["queue", "outcome"],
    registry=REGISTRY,
)
PROCESSING_SECONDS = Histogram(
    "dispatcher_batch_processing_seconds",
    "Time to apply and commit one batch of messages",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "dispatcher_batch_size_messages",
    "Messages per database transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    registry=REGISTRY,
)
EVENT_LAG = Histogram(
    "dispatcher_event_lag_seconds",
    "Commit time minus the message's event_time",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
    registry=REGISTRY,
)
RECOMPUTATIONS = Counter(
    "dispatcher_history_recomputations",
    "Targets whose state was recomputed from history because an event arrived out of order",
    ["kind"],
    registry=REGISTRY,
)
DB_RECONNECTS = Counter(
    "dispatcher_db_reconnects",
    "Database failures that made the consumer pause and retry",
    registry=REGISTRY,
)
AMQP_RECONNECTS = Counter(
    "dispatcher_amqp_reconnects",
    "Broker connections re-established after a loss",
    registry=REGISTRY,
)
AMQP_CONNECTED = Gauge(
    "dispatcher_amqp_connected", "1 while the broker connection is up", registry=REGISTRY
)
CONSUMING = Gauge(
    "dispatcher_consuming", "1 while the daemon takes messages from its queues", registry=REGISTRY
)
DEAD_LETTER_DEPTH = Gauge(
    "dispatcher_dead_letter_messages",
    "Messages waiting in each dead-letter queue (sampled)",
    ["queue"],
    registry=REGISTRY,
)
CLUSTER_SILENT = Gauge(
    "dispatcher_cluster_eventd_silent_seconds",
    "Seconds since an online cluster's eventd was last heard of: a heartbeat or an applied "
    "event (sampled)",
    ["cluster"],
    registry=REGISTRY,
)
CLUSTER_LAST_HEARTBEAT = Gauge(
    "dispatcher_cluster_last_heartbeat_timestamp_seconds",
    "Time of the newest heartbeat of each online cluster's eventd (sampled)",
    ["cluster"],
    registry=REGISTRY,
)
CLUSTER_LAST_EVENT = Gauge(
    "dispatcher_cluster_last_event_timestamp_seconds",
    "When an event about each online cluster was last applied (sampled)",
    ["cluster"],
    registry=REGISTRY,
)
RAPI_REQUESTS = Counter(
    "dispatcher_rapi_requests",
    "Ganeti RAPI requests, by operation and outcome (ok or the error type)",
    ["operation", "outcome"],
    registry=REGISTRY,
)
RAPI_SECONDS = Histogram(
    "dispatcher_rapi_request_seconds",
    "Ganeti RAPI request latency",
    ["operation"],
    registry=REGISTRY,
)
EVENTD_PUBLISHED = Counter(
    "dispatcher_eventd_published_messages",
    "Messages eventd published and the broker confirmed, by type",
    ["type"],
    registry=REGISTRY,
)
