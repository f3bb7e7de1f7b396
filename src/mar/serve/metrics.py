"""The server's counters, latencies and queue depth, in the Prometheus text format.

Each server has its own registry (no process-global state), with the standard
``process_*`` metrics (resident memory, CPU seconds, open files) of the server process.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
STAGES = ("decode", "queue", "model", "total", "timeline")
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
VIEWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """``mar_requests_total{code}``, ``mar_request_seconds{stage}`` (decode, queue, model,
    total; timeline for requests that ask for one), ``mar_batch_views`` and
    ``mar_batch_requests`` per model call, ``mar_queue_depth``, ``mar_inflight_requests``,
    ``mar_uploads_in_progress``, ``mar_ready``."""

    def __init__(self, queue_depth: Callable[[], int] = lambda: 0):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("mar_requests", "POST /v1/predict answers, by status code",
                                ["code"], registry=r)
        self.seconds = Histogram("mar_request_seconds", "time per successful prediction, "
                                 "by stage (decode, queue, model, total, timeline)", ["stage"],
                                 buckets=SECONDS, registry=r)
        self.batch_views = Histogram("mar_batch_views", "views per model call",
                                     buckets=VIEWS, registry=r)
        self.batch_requests = Histogram("mar_batch_requests", "requests per model call",
                                        buckets=VIEWS, registry=r)
        self.queue_depth = Gauge("mar_queue_depth", "requests waiting for the model",
                                 registry=r)
        self.queue_depth.set_function(queue_depth)
        self.inflight = Gauge("mar_inflight_requests", "prediction requests holding a "
                              "model slot: uploaded, not yet answered (--queue-size bounds "
                              "it)", registry=r)
        self.uploads = Gauge("mar_uploads_in_progress", "prediction requests whose upload "
                             "is being received (--max-uploads bounds it)", registry=r)
        self.ready = Gauge("mar_ready", "1 once the model is loaded and warmed up",
                           registry=r)

    def on_batch(self, views: int, requests: int, model_s: float) -> None:
        self.batch_views.observe(views)
        self.batch_requests.observe(requests)

    def render(self) -> bytes:
        return generate_latest(self.registry)
