"""Prometheus metrics of the inference server. No metric carries a user id."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
ADAPTER_REFUSAL_REASONS = ("unreadable", "mismatch", "wrong_base", "checksum", "rank", "targets",
                           "non_finite", "load_failed")
"""AdapterRejected reasons of store.py, and the engine refusing the weights."""
M = TypeVar("M", Counter, Gauge, Histogram)


class Children(Generic[M]):
    """The labelled series of one metric, looked up once per label values.

    ``metric.labels(...)`` converts and checks the values and takes the metric's lock
    on every call; hot paths (every gRPC call, every Kafka write) ask this instead.
    The series are the metric's own (nothing here removes series), so they are
    exported exactly as ``labels()`` would make them. Only for label values drawn
    from small fixed sets (methods, status codes, topics, reasons), never user ids.
    """

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._cache.get(values)
        if child is None:  # two threads may both ask labels(): it returns one series
            child = self._cache[values] = self._metric.labels(*values)
        return child


class ServerMetrics:
    """All server metrics, on their own registry (tests build several servers).

    Labelled series whose values are known up front (the topics written, the
    refusal reasons, ...) exist from the start at 0: dashboards show them, and
    ``increase()`` in an alert sees the first event of a new label value.
    """

    def __init__(self, registry: CollectorRegistry | None = None,
                 generations_topic: str = "generations", feedback_topic: str = "feedback"
                 ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        p = "personalize_server_"
        self.requests = Counter(p + "requests", "Calls by method, status code (gRPC's name, "
                                "on both APIs) and api (grpc, http).",
                                ["method", "code", "api"], registry=r)
        self.request_seconds = Histogram(p + "request_duration_seconds",
                                         "Whole-call latency by method and api (grpc, http).",
                                         ["method", "api"], buckets=_LATENCY, registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds",
                              "Time from request to the first streamed token.",
                              buckets=_LATENCY, registry=r)
        self.inter_token = Histogram(p + "inter_token_latency_seconds",
                                     "Time between streamed tokens of one candidate.",
                                     buckets=_TOKEN, registry=r)
        self.tokens = Counter(p + "generated_tokens", "Completion tokens generated.",
                              ["adapter"], registry=r)
        self.running = Gauge(p + "running_streams", "Generate calls in flight.", registry=r)
        self.engine_requests = Gauge(
            p + "engine_requests", "Engine requests (one per candidate) submitted and not "
            "finished: waiting = no output yet, running = streaming tokens.", ["state"],
            registry=r)
        self.lora_cache = Counter(
            p + "lora_cache_requests", "Generate calls on a personal adapter, by whether the "
            "version was loaded in the engine (hit) or had to be read from the store (miss).",
            ["result"], registry=r)
        self.active_adapters = Gauge(p + "active_adapters",
                                     "Adapter versions routed to or still in use.", registry=r)
        self.comparison_candidates = Counter(
            p + "comparison_candidates", "Candidates answered by a comparison arm (base or "
            "parent) instead of the served adapter (interleaved online evaluation).",
            ["arm"], registry=r)
        self.adapter_loads = Counter(p + "adapter_loads",
                                     "Adapter versions loaded, by result.", ["result"], registry=r)
        self.adapter_swap_seconds = Histogram(p + "adapter_swap_duration_seconds",
                                              "Verify + load time of a new adapter version.",
                                              buckets=_LATENCY, registry=r)
        self.adapter_refusals = Counter(p + "adapter_refusals",
                                        "Adapter versions refused, by reason.", ["reason"],
                                        registry=r)
        self.feedback = Counter(p + "feedback", "Feedback calls by result and reason.",
                                ["result", "reason"], registry=r)
        self.produce_seconds = Histogram(p + "kafka_produce_duration_seconds",
                                         "Time to a broker acknowledgement, by topic.",
                                         ["topic"], buckets=_LATENCY, registry=r)
        self.produce_errors = Counter(p + "kafka_produce_errors",
                                      "Records the broker did not acknowledge, by topic.",
                                      ["topic"], registry=r)
        self.requests_by = Children(self.requests)
        """``requests`` by (method, code, api), cached."""
        self.request_seconds_by = Children(self.request_seconds)
        """``request_seconds`` by (method, api), cached."""
        self.feedback_by = Children(self.feedback)
        """``feedback`` by (result, reason), cached."""
        self._produce_seconds_by = Children(self.produce_seconds)
        for topic in (generations_topic, feedback_topic):
            self.produce_errors.labels(topic)
        for reason in ADAPTER_REFUSAL_REASONS:
            self.adapter_refusals.labels(reason)
        for metric, values in ((self.engine_requests, ("waiting", "running")),
                               (self.lora_cache, ("hit", "miss")),
                               (self.adapter_loads, ("ok", "refused")),
                               (self.tokens, ("base", "personal")),
                               (self.comparison_candidates, ("base", "parent"))):
            for value in values:
                metric.labels(value)

    @contextmanager
    def engine_request(self) -> Iterator[Callable[[], None]]:
        """Count one engine request as waiting until the callable it yields is
        called (its first output), then as running, until the block ends."""
        state = "waiting"
        self.engine_requests.labels(state).inc()

        def first_output() -> None:
            nonlocal state
            if state == "waiting":
                self.engine_requests.labels("waiting").dec()
                self.engine_requests.labels("running").inc()
                state = "running"

        try:
            yield first_output
        finally:
            self.engine_requests.labels(state).dec()

    def observe_produce(self, topic: str, seconds: float, ok: bool) -> None:
        self._produce_seconds_by(topic).observe(seconds)
        if not ok:
            self.produce_errors.labels(topic).inc()
