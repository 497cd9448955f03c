"""Prometheus metrics of the hub, on one ``CollectorRegistry`` per Hub.

``hub.metrics`` is shared by every area: the predict paths record requests,
errors and latency per model/version/group here; the shadow mirror updates
``shadow_queue_depth`` / ``shadow_dropped`` / ``shadow_requests``; the HTTP
middleware counts responses per method/status. ``GET /metrics`` exposes
``registry`` in the Prometheus text format. Label children are cached so the
hot path does not rebuild label tuples.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class HubMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        mvg = ["model", "version", "group", "endpoint"]
        self.requests = Counter("hub_predict_requests", "Prediction requests answered, per model/version/"
                                "group and endpoint (predict|oip).", mvg, registry=r)
        self.rows = Counter("hub_predict_rows", "Rows (instances) scored.", mvg, registry=r)
        self.latency = Histogram("hub_predict_latency_seconds", "Time from request parsed to answer "
                                 "built (inference + codecs), per model/version/group.", mvg,
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("hub_predict_errors", "Failed prediction requests by model, endpoint "
                              "and error code.", ["model", "endpoint", "code"], registry=r)
        self.model_errors = Counter("hub_predict_model_errors", "Predictions the model failed (engine "
                                    "failure, model load failure, 5xx; not client 4xx errors), per model/"
                                    "version/group, endpoint and error code: a failing challenger shows "
                                    "here.", ["model", "version", "group", "endpoint", "code"], registry=r)
        self.http_requests = Counter("hub_http_requests", "HTTP responses by method and status.",
                                     ["method", "status"], registry=r)
        self.http_latency = Histogram("hub_http_request_duration_seconds", "HTTP request duration "
                                      "(whole request, all routes).", ["method"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.models_loaded = Gauge("hub_models_loaded", "Models loaded in the hub's cache.", registry=r)
        self.model_loads = Counter("hub_model_loads", "Model loads (cache misses).", ["model", "version"],
                                   registry=r)
        self.microbatch_size = Histogram("hub_microbatch_rows", "Rows per micro-batch run.",
                                         ["model", "version"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                                         registry=r)
        # Shadow mirror (updated by cloud_hub/shadow/).
        self.shadow_queue_depth = Gauge("hub_shadow_queue_depth", "Requests waiting in the shadow "
                                        "mirror queue.", registry=r)
        self.shadow_dropped = Counter("hub_shadow_dropped", "Shadow mirror requests dropped because "
                                      "the queue was full.", ["model"], registry=r)
        self.shadow_requests = Counter("hub_shadow_requests", "Requests mirrored to a shadow version.",
                                       ["model", "version"], registry=r)
        self.shadow_latency = Histogram("hub_shadow_latency_seconds", "Shadow model latency.",
                                        ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.shadow_errors = Counter("hub_shadow_errors", "Shadow model failures.", ["model", "version"],
                                     registry=r)
        self._children: dict[tuple, tuple] = {}

    def observe_predict(self, model: str, version: str, group: str, endpoint: str, rows: int,
                        seconds: float) -> None:
        key = (model, version, group, endpoint)
        ch = self._children.get(key)
        if ch is None:
            ch = (self.requests.labels(*key), self.rows.labels(*key), self.latency.labels(*key))
            self._children[key] = ch
        ch[0].inc()
        ch[1].inc(rows)
        ch[2].observe(seconds)

    def observe_error(self, model: str, endpoint: str, code: str) -> None:
        self.errors.labels(model, endpoint, code).inc()

    def observe_model_error(self, model: str, version: str, group: str, endpoint: str, code: str) -> None:
        self.model_errors.labels(model, version, group, endpoint, code).inc()

    def observe_http(self, method: str, status: int, seconds: float) -> None:
        key = (method, status)
        ch = self._children.get(key)
        if ch is None:
            ch = (self.http_requests.labels(method, str(status)), self.http_latency.labels(method))
            self._children[key] = ch
        ch[0].inc()
        ch[1].observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
