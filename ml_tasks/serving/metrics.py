"""The model service's Prometheus metrics, beside KServe's own on ``/metrics``.

KServe already exports ``request_preprocess_seconds`` / ``request_predict_seconds`` per model.
These add what an operator of the annotation loop needs: how many requests and images were
served or refused (every 4xx, by status and reason), the whole handler's latency per protocol,
which model version answers and how following the champion goes (swaps, versions that did not
load, MLflow not answering), and what happened to the inputs kept for annotation (dropped
because the queue was full; stored, failed, the write latency and the queue depth come from the
writer process, see ``ml_tasks.serving.store``).
Created on first use, never at import time, in the default registry that KServe's
``/metrics`` handler serves.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

# Small images on a small model: most requests take about a millisecond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.5, 2.0)
STORE_BUCKETS = (0.001, 0.004, 0.016, 0.064, 0.25, 1.0, 4.0, 16.0)
# The store writer's slots in shared memory: stored, failed, seconds (sum), then one count per
# latency bucket and +Inf.
SLOT_STORED, SLOT_FAILED, SLOT_SECONDS, SLOT_BUCKETS = 0, 1, 2, 3
SLOTS = SLOT_BUCKETS + len(STORE_BUCKETS) + 1


@dataclass(frozen=True)
class ServingMetrics:
    requests: Any
    """Counter ``flywheel_serve_requests_total{model_name, protocol, outcome}``."""
    images: Any
    """Counter ``flywheel_serve_images_total{model_name}``: images classified."""
    refused: Any
    """Counter ``flywheel_serve_refused_total{model_name, status, reason}``: every 4xx answer
    (``model_name`` is empty when the path names no model this server serves)."""
    latency: Any
    """Histogram ``flywheel_serve_request_seconds{model_name, protocol}``: parse + predict."""
    swaps: Any
    """Counter ``flywheel_serve_model_swaps_total{model_name}``: a new version swapped in."""
    version: Any
    """Gauge ``flywheel_serve_model_version{model_name}``: the registry version answering."""
    load_failures: Any
    """Counter ``flywheel_serve_model_load_failures_total{model_name}``: attempts to load the
    version the alias names that failed (the serving version kept serving)."""
    registry_failures: Any
    """Counter ``flywheel_serve_registry_failures_total{model_name}``: alias look-ups that
    MLflow did not answer (or answered with an error)."""
    dropped: Any
    """Counter ``flywheel_incoming_dropped_total``: sampled images dropped, queue full.

    ``flywheel_incoming_stored_total``, ``flywheel_incoming_failed_total`` and the histogram
    ``flywheel_incoming_store_seconds`` are counted by the writer process and exported by
    ``ml_tasks.serving.store``'s collector.
    """


@cache
def serving_metrics() -> ServingMetrics:
    """The metrics, registered once per process in prometheus_client's default registry."""
    from prometheus_client import Counter, Gauge, Histogram

    return ServingMetrics(
        requests=Counter(
            "flywheel_serve_requests",
            "Inference requests by protocol and outcome",
            ["model_name", "protocol", "outcome"],
        ),
        images=Counter("flywheel_serve_images", "Images classified", ["model_name"]),
        refused=Counter(
            "flywheel_serve_refused",
            "Requests answered with a 4xx, by status and reason",
            ["model_name", "status", "reason"],
        ),
        latency=Histogram(
            "flywheel_serve_request_seconds",
            "Time to parse a request and predict",
            ["model_name", "protocol"],
            buckets=LATENCY_BUCKETS,
        ),
        swaps=Counter(
            "flywheel_serve_model_swaps", "New model versions swapped in", ["model_name"]
        ),
        version=Gauge(
            "flywheel_serve_model_version", "The model version that answers", ["model_name"]
        ),
        load_failures=Counter(
            "flywheel_serve_model_load_failures",
            "Failed attempts to load the version the watched alias names",
            ["model_name"],
        ),
        registry_failures=Counter(
            "flywheel_serve_registry_failures",
            "Alias look-ups in MLflow that failed",
            ["model_name"],
        ),
        dropped=Counter(
            "flywheel_incoming_dropped", "Sampled images dropped because the store queue was full"
        ),
    )


def store_counts() -> dict[str, int]:
    """Images stored, dropped and failed so far in this process (for the shutdown event)."""
    from prometheus_client import REGISTRY

    return {
        outcome: int(REGISTRY.get_sample_value(f"flywheel_incoming_{outcome}_total") or 0)
        for outcome in ("stored", "dropped", "failed")
    }


class _StoreCollector:
    """Exports the store writer process's shared counts as Prometheus metrics at scrape time."""

    def __init__(self) -> None:
        self._shared: Any = None
        self._store: Any = None

    def watch(self, shared: Any, store: Any) -> None:
        """Export ``shared`` (the writer's slots) and ``store.depth()`` from now on."""
        self._shared, self._store = shared, store

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        values = list(self._shared) if self._shared is not None else [0.0] * SLOTS
        yield CounterMetricFamily(
            "flywheel_incoming_stored", "Images stored under incoming/", value=values[SLOT_STORED]
        )
        yield CounterMetricFamily(
            "flywheel_incoming_failed",
            "Images whose write to the lake failed",
            value=values[SLOT_FAILED],
        )
        buckets, total = [], 0.0
        for bound, count in zip((*STORE_BUCKETS, float("inf")), values[SLOT_BUCKETS:], strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else str(bound), total))
        yield HistogramMetricFamily(
            "flywheel_incoming_store_seconds",
            "Time to write one image and its sidecar",
            buckets=buckets,
            sum_value=values[SLOT_SECONDS],
        )
        yield GaugeMetricFamily(
            "flywheel_incoming_queue_depth",
            "Images waiting to be stored",
            value=self._store.depth() if self._store is not None else 0,
        )


@cache
def store_collector() -> _StoreCollector:
    from prometheus_client import REGISTRY

    collector = _StoreCollector()
    REGISTRY.register(collector)
    return collector
