"""The model service's Prometheus metrics, beside KServe's own on ``/metrics``.

KServe already exports ``request_preprocess_seconds`` / ``request_predict_seconds`` per model.
These add what an operator of the annotation loop needs: how many requests and images were
served or refused (and why), the whole handler's latency per protocol, and what happened to
the inputs kept for annotation (dropped because the queue was full; stored, failed, the write
latency and the queue depth come from the writer process, see ``ml_tasks.serving.store``).
Created on first use, never at import time, in the default registry that KServe's
``/metrics`` handler serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

# Small images on a small model: most requests take about a millisecond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.5, 2.0)
STORE_BUCKETS = (0.001, 0.004, 0.016, 0.064, 0.25, 1.0, 4.0, 16.0)


@dataclass(frozen=True)
class ServingMetrics:
    requests: Any
    """Counter ``flywheel_serve_requests_total{model_name, protocol, outcome}``."""
    images: Any
    """Counter ``flywheel_serve_images_total{model_name}``: images classified."""
    bad_inputs: Any
    """Counter ``flywheel_serve_bad_inputs_total{model_name, reason}``: 400s by reason."""
    latency: Any
    """Histogram ``flywheel_serve_request_seconds{model_name, protocol}``: parse + predict."""
    dropped: Any
    """Counter ``flywheel_incoming_dropped_total``: sampled images dropped, queue full.

    ``flywheel_incoming_stored_total``, ``flywheel_incoming_failed_total`` and the histogram
    ``flywheel_incoming_store_seconds`` are counted by the writer process and exported by
    ``ml_tasks.serving.store``'s collector.
    """


@cache
def serving_metrics() -> ServingMetrics:
    """The metrics, registered once per process in prometheus_client's default registry."""
    from prometheus_client import Counter, Histogram

    return ServingMetrics(
        requests=Counter(
            "flywheel_serve_requests",
            "Inference requests by protocol and outcome",
            ["model_name", "protocol", "outcome"],
        ),
        images=Counter("flywheel_serve_images", "Images classified", ["model_name"]),
        bad_inputs=Counter(
            "flywheel_serve_bad_inputs",
            "Requests refused with 400, by reason",
            ["model_name", "reason"],
        ),
        latency=Histogram(
            "flywheel_serve_request_seconds",
            "Time to parse a request and predict",
            ["model_name", "protocol"],
            buckets=LATENCY_BUCKETS,
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
