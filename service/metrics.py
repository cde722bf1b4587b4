"""Prometheus metrics on an injected registry (names fixed: dashboards and alerts use them), plus
the client library's standard `process_*` and `python_*` collectors.

Labels are bounded: `task` is a configured task name (or `_unknown`), `code` an HTTP status,
`reason` one of a fixed set, `backend`/`provider`/`variant`/`version` come from configuration.
"""

from __future__ import annotations

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
PIXEL_BUCKETS = tuple(float(s * s) for s in (64, 128, 256, 512, 1024, 2048, 4096, 8192))
UNKNOWN_TASK = "_unknown"
BATCHER_REASONS = ("queue_full", "draining", "deadline", "expired", "disconnected", "busy")
"""Reasons the batchers count; the handler adds the 4xx error codes of `service.errors`."""
CONNECTION_REASONS = ("bad_request", "request_timeout", "headers_too_large", "too_many_connections")
"""Refusals of the HTTP layer before a request reaches a route (`service.http.http_protocol`): no task is
known yet, so they carry `task="_unknown"`."""


def rejection_reasons() -> tuple[str, ...]:
    """Every `reason` label `diffir_rejected_total` can carry (so each series exists from start-up)."""
    from service.errors import ERRORS

    unlabelled = {"unknown_task", "not_found", "method_not_allowed"}  # no configured task to label them with
    codes = [e.code for e in ERRORS.values() if 400 <= e.status < 500 and e.code not in unlabelled]
    return tuple(dict.fromkeys([*BATCHER_REASONS, *codes]))


class Metrics:
    """Every metric of the service, created once per app on the registry it is given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        if registry is not REGISTRY:  # the default registry has them already
            # process_* (CPU seconds, resident memory, open fds, start time), python_info, python_gc_*
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.requests = Counter(
            "diffir_requests", "Restore requests by final HTTP status", ["task", "code"], registry=registry
        )
        self.request_duration = Histogram(
            "diffir_request_duration_seconds",
            "Wall time of restore requests, body read to response",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "diffir_queue_wait_seconds",
            "Time from enqueue to batch start",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "diffir_inference_duration_seconds",
            "Model time per batch",
            ["task", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "diffir_batch_size", "Requests per model call", ["task"], buckets=BATCH_BUCKETS, registry=registry
        )
        self.queue_depth = Gauge("diffir_queue_depth", "Requests waiting per task", ["task"], registry=registry)
        self.rejected = Counter(
            "diffir_rejected",
            "Requests refused or dropped (queue_full, draining, deadline, expired, too_large, bad_input, ...)",
            ["task", "reason"],
            registry=registry,
        )
        self.input_pixels = Histogram(
            "diffir_input_pixels",
            "Input pixels per accepted image",
            ["task"],
            buckets=PIXEL_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "diffir_model_info",
            "Loaded model per task (value 1)",
            ["task", "variant", "backend", "provider", "version"],
            registry=registry,
        )
        self.backend_candidate = Gauge(
            "diffir_backend_candidate_seconds",
            "DIFFIR_BACKEND=auto: each candidate's time on the tuning input (chosen=1 for the one serving)",
            ["task", "candidate", "accepted", "chosen"],
            registry=registry,
        )
        self.disconnected = Counter(
            "diffir_disconnected",
            "Requests whose client went away while queued (not computed)",
            ["task"],
            registry=registry,
        )
        self.decode_duration = Histogram(
            "diffir_decode_duration_seconds",
            "Time to check and decode an upload (header, worker, float conversion)",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.decode_queue = Gauge(
            "diffir_decode_queue_depth", "Uploads waiting for a decode worker", ["lane"], registry=registry
        )
        self.upload_bytes = Gauge(
            "diffir_upload_bytes_in_flight",
            "Request body bytes held by uploads being read or decoded",
            registry=registry,
        )
        self.tiles = Counter("diffir_tiles", "Tiles restored for tiled (large) inputs", ["task"], registry=registry)
        self.device_healthy = Gauge(
            "diffir_device_healthy", "0 after a sticky accelerator fault (the process must restart)", registry=registry
        )
        self.device_healthy.set(1)
        self.ready = Gauge("diffir_ready", "1 when every task is loaded and warmed and not draining", registry=registry)
        self.ready.set(0)
        for reason in CONNECTION_REASONS:
            self.rejected.labels(UNKNOWN_TASK, reason)

    def connection_refused(self, code: str) -> None:
        """A connection-level refusal (`CONNECTION_REASONS`): bad framing, slow or oversized headers, too many
        connections."""
        self.rejected.labels(UNKNOWN_TASK, code).inc()

    def record_tuning(self, task: str, tuning: dict | None) -> None:
        """DIFFIR_BACKEND=auto: each candidate's tuning time (`service.runtime.autotune.Tuning`)."""
        for trial in (tuning or {}).get("trials", []):
            if trial["seconds"] is not None:
                chosen = "1" if trial["label"] == tuning["chosen"] else "0"  # type: ignore[index]
                labels = (task, trial["label"], str(trial["accepted"]).lower(), chosen)
                self.backend_candidate.labels(*labels).set(trial["seconds"])

    def init_task(self, task: str) -> None:
        """Create the task's counters at 0, so rates and alerts see the series before the first event."""
        for reason in rejection_reasons():
            self.rejected.labels(task, reason)
        self.disconnected.labels(task)
