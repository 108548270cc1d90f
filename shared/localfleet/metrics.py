"""Prometheus metrics, in a registry of the runtime's own (several servers can live in one test process)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from localfleet.settings import split_addr

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)


class Metrics:
    def __init__(self, backend: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"backend": backend}
        self.calls = Counter(
            "localfleet_calls",
            "RPCs answered, by method and gRPC status code",
            ["rpc", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "localfleet_call_seconds",
            "RPC latency, by method",
            ["rpc"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("localfleet_in_flight", "RPCs being served now", registry=self.registry)
        self.queue_depth = Gauge(
            "localfleet_queue_depth", "requests waiting for a slot", registry=self.registry
        )
        self.load_seconds = Histogram(
            "localfleet_model_load_seconds",
            "time LoadModel took",
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900),
            registry=self.registry,
        )
        self.steps = Counter(
            "localfleet_steps",
            "steps of long work done (denoising steps), by method",
            ["rpc"],
            registry=self.registry,
        )
        self.tokens = Counter("localfleet_tokens_generated", "tokens generated", registry=self.registry)
        self.first_token = Histogram(
            "localfleet_time_to_first_token_seconds",
            "time from request to first token",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        info = Gauge(
            "localfleet_backend_info",
            "which backend this process serves",
            ["backend"],
            registry=self.registry,
        )
        info.labels(**labels).set(1)

    def serve(self, addr: str) -> None:
        host, port = split_addr(addr)
        start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, port)
