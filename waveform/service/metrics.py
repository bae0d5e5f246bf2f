"""Prometheus metrics of one server (its own registry, so servers do not share)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter("waveform_calls", "gRPC calls by method and status code",
                             ["method", "code"], registry=self.registry)
        self.latency = Histogram("waveform_call_seconds", "gRPC call latency by method",
                                 ["method"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("waveform_ingest_queue_depth",
                                 "objects waiting for the next group commit",
                                 registry=self.registry)

    def call(self, method: str, code: str, seconds: float) -> None:
        self.calls.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def watch_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics on ``host:port`` (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)
