"""Prometheus metrics of the inference server. No metric carries a user id."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServerMetrics:
    """All server metrics, on their own registry (tests build several servers)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        p = "personalize_server_"
        self.requests = Counter(p + "requests", "gRPC calls by method and status code.",
                                ["method", "code"], registry=r)
        self.request_seconds = Histogram(p + "request_duration_seconds",
                                         "Whole gRPC call latency by method.", ["method"],
                                         buckets=_LATENCY, registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds",
                              "Time from request to the first streamed token.",
                              buckets=_LATENCY, registry=r)
        self.inter_token = Histogram(p + "inter_token_latency_seconds",
                                     "Time between streamed tokens of one candidate.",
                                     buckets=_TOKEN, registry=r)
        self.tokens = Counter(p + "generated_tokens", "Completion tokens generated.",
                              ["adapter"], registry=r)
        self.running = Gauge(p + "running_streams", "Generate calls in flight.", registry=r)
        self.active_adapters = Gauge(p + "active_adapters",
                                     "Adapter versions routed to or still in use.", registry=r)
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

    def observe_produce(self, topic: str, seconds: float, ok: bool) -> None:
        self.produce_seconds.labels(topic).observe(seconds)
        if not ok:
            self.produce_errors.labels(topic).inc()
