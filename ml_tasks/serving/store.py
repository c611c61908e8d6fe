"""Keeping served images for annotation, off the request path.

The request handler only samples and enqueues (:meth:`IncomingStore.offer`, which never
blocks); one background process re-encodes, hashes and writes each image to the lake with its
sidecar, per the contract the annotation loop reads (issue 5):

- ``incoming/<YYYY-MM-DD>/<content_hash[:16]>.png``: the image as PNG (the request's own bytes
  when they are a PNG, else a lossless re-encoding of the decoded image; pixel-array inputs
  become an 8-bit grayscale PNG);
- ``incoming/<YYYY-MM-DD>/<content_hash[:16]>.json``: ``content_hash`` (sha256 of the PNG),
  ``prediction``, ``score``, ``probabilities``, ``model_name``, ``model_version``,
  ``request_id``, ``received_at`` (ISO UTC), ``image_key``; written after the image, so a
  sidecar means its image is complete. The same image sent twice has the same key: the second
  write replaces the first (the newest prediction wins), it never duplicates.

The queue is bounded: when the writer falls behind (a slow or unreachable lake), new images are
dropped and counted (``flywheel_incoming_dropped_total``) instead of growing memory or slowing
inference. Write failures are counted (``flywheel_incoming_failed_total``) and logged as
``incoming_store_failed`` events, throttled so an outage writes a line every few seconds, not
one per request. Either way the requests themselves succeed.
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

import numpy as np

from ml_tasks import events
from ml_tasks.images import content_hash, encode_png
from ml_tasks.serving.metrics import STORE_BUCKETS, ServingMetrics, serving_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INCOMING_PREFIX = "incoming"


@dataclass(frozen=True)
class IncomingImage:
    """One served image and what the model said about it."""

    source: bytes | np.ndarray
    """Encoded bytes as received, or pixels (float32 in [0, 1])."""
    prediction: str
    score: float
    probabilities: dict[str, float]
    model_name: str
    model_version: str | None
    request_id: str
    received_at: datetime

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickled on the way to the writer process for every stored image: a plain tuple of
        # fields pickles several times faster than the dataclass's default state dict.
        return (IncomingImage, tuple(getattr(self, f) for f in _FIELDS))


_FIELDS = tuple(IncomingImage.__dataclass_fields__)


def as_png(source: bytes | np.ndarray) -> bytes:
    """The image as PNG bytes: PNGs unchanged, other formats re-encoded without loss."""
    if isinstance(source, np.ndarray):
        return encode_png(np.rint(np.clip(source, 0.0, 1.0) * 255.0).astype(np.uint8))
    if source.startswith(PNG_SIGNATURE):
        return source
    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(io.BytesIO(source)) as image:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def incoming_keys(digest: str, received_at: datetime) -> tuple[str, str]:
    """The image and sidecar keys of an image with sha256 ``digest``, received at a UTC time."""
    stem = f"{INCOMING_PREFIX}/{received_at.strftime('%Y-%m-%d')}/{digest[:16]}"
    return f"{stem}.png", f"{stem}.json"


def write_incoming(lake: Any, item: IncomingImage) -> str:
    """Write one image, then its sidecar; returns the image key."""
    png = as_png(item.source)
    digest = content_hash(png)
    image_key, sidecar_key = incoming_keys(digest, item.received_at)
    sidecar = {
        "content_hash": digest,
        "prediction": item.prediction,
        "score": item.score,
        "probabilities": item.probabilities,
        "model_name": item.model_name,
        "model_version": item.model_version,
        "request_id": item.request_id,
        "received_at": item.received_at.isoformat(timespec="milliseconds"),
        "image_key": image_key,
    }
    lake.write_bytes(image_key, png)
    lake.write_bytes(sidecar_key, json.dumps(sidecar, sort_keys=True).encode())
    return image_key


@dataclass
class _Throttle:
    """Says yes at most once per ``seconds``, and counts what it held back meanwhile."""

    seconds: float
    last: float = field(default=-1e9)
    held: int = 0

    def ready(self) -> int | None:
        now = time.monotonic()
        if now - self.last >= self.seconds:
            self.last, held, self.held = now, self.held, 0
            return held
        self.held += 1
        return None


class IncomingStore:
    """A bounded queue between the predictor and one writer process that owns the lake.

    The writer is a separate process (not a thread) on purpose: writing takes CPU (PNG
    re-encoding, hashing, an S3 client's request signing) and a thread would take it from the
    request handler through the GIL, which measurably cut throughput on two cores. The process
    runs at the lowest priority (nice 19): when the CPU is contended, inference gets it first
    and the queue fills and drops (counted) instead; on an idle CPU the writer keeps up. Its
    counts live in shared memory, exported on the server's ``/metrics`` by a collector
    registered in this process.
    """

    def __init__(
        self,
        lake_uri: str,
        *,
        sample_rate: float = 1.0,
        max_queue: int = 1000,
        event_interval: float = 10.0,
        metrics: ServingMetrics | None = None,
    ) -> None:
        import multiprocessing

        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample rate {sample_rate} is not in [0, 1]")
        if max_queue < 1:
            raise ValueError("the store queue needs room for at least one image")
        self.lake_uri = lake_uri
        self.sample_rate = sample_rate
        self.event_interval = event_interval
        self.metrics = metrics or serving_metrics()
        self._context = multiprocessing.get_context("spawn")
        self._queue: Any = self._context.Queue(maxsize=max_queue)
        self._max_queue = max_queue
        self._shared: Any = self._context.Array("d", _SLOTS)
        self._process: Any = None
        self._drops = _Throttle(event_interval)
        _collector().watch(self._shared, self._queue)

    def sampled(self) -> bool:
        """Whether to keep the next image (decided per image)."""
        return self.sample_rate >= 1.0 or (
            self.sample_rate > 0.0 and random.random() < self.sample_rate
        )

    def offer(self, item: IncomingImage) -> bool:
        """Queue an image without waiting; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.metrics.dropped.inc()
            held = self._drops.ready()
            if held is not None:
                events.emit(
                    "incoming_dropped",
                    level="warning",
                    queue_size=self._max_queue,
                    dropped_since_last_event=held + 1,
                    request_id=item.request_id,
                )
            return False
        return True

    def start(self) -> None:
        """Start the writer process (idempotent)."""
        if self._process is None:
            self._process = self._context.Process(
                target=_write_forever,
                name="incoming-store",
                daemon=True,
                args=(self.lake_uri, self._queue, self._shared, self.event_interval),
            )
            self._process.start()

    def close(self, timeout: float = 10.0) -> int:
        """Write what is queued (for up to ``timeout`` s), stop; returns images left unwritten."""
        process, self._process = self._process, None
        if process is None:
            return 0
        deadline = time.monotonic() + timeout
        # Full means the writer is far behind: it gets until the deadline, then is stopped.
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=max(0.01, deadline - time.monotonic()))
        process.join(max(0.0, deadline - time.monotonic()))
        left = 0
        if process.is_alive():
            process.terminate()
            process.join(5)
            left = max(1, self._queue.qsize())
            events.emit("incoming_unwritten", level="warning", images=left)
        return left


# Shared slots: stored, failed, seconds (sum), then one count per latency bucket and +Inf.
_STORED, _FAILED, _SECONDS, _BUCKETS = 0, 1, 2, 3
_SLOTS = _BUCKETS + len(STORE_BUCKETS) + 1


def _write_forever(lake_uri: str, items: Any, shared: Any, event_interval: float) -> None:
    """The writer process: take images off the queue and write them until told to stop."""
    import bisect
    import os
    import signal

    from ml_tasks.lake import open_lake

    os.nice(19)
    # Signals to the process group (Ctrl-C, a test's killpg) are the server's to handle: it
    # drains the queue and then tells us to stop. If the server dies without that, we notice
    # (a new parent) and stop too, rather than wait forever.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    events.configure("serve")
    failures = _Throttle(event_interval)
    lake = None
    while True:
        try:
            item = items.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if item is None:
            return
        started = time.perf_counter()
        try:
            if lake is None:
                lake = open_lake(lake_uri)
            write_incoming(lake, item)
            outcome = _STORED
        except Exception as exc:  # a broken lake must never stop serving: count, log
            outcome = _FAILED
            held = failures.ready()
            if held is not None:
                events.emit(
                    "incoming_store_failed",
                    level="error",
                    lake=lake_uri,
                    error=f"{type(exc).__name__}: {exc}",
                    failed_since_last_event=held + 1,
                    request_id=item.request_id,
                )
        seconds = time.perf_counter() - started
        with shared.get_lock():
            shared[outcome] += 1
            shared[_SECONDS] += seconds
            shared[_BUCKETS + bisect.bisect_left(STORE_BUCKETS, seconds)] += 1


class _StoreCollector:
    """Exports the writer process's shared counts as Prometheus metrics at scrape time."""

    def __init__(self) -> None:
        self._shared: Any = None
        self._queue: Any = None

    def watch(self, shared: Any, items: Any) -> None:
        self._shared, self._queue = shared, items

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        values = list(self._shared) if self._shared is not None else [0.0] * _SLOTS
        yield CounterMetricFamily(
            "flywheel_incoming_stored", "Images stored under incoming/", value=values[_STORED]
        )
        yield CounterMetricFamily(
            "flywheel_incoming_failed",
            "Images whose write to the lake failed",
            value=values[_FAILED],
        )
        buckets, total = [], 0.0
        for bound, count in zip((*STORE_BUCKETS, float("inf")), values[_BUCKETS:], strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else str(bound), total))
        yield HistogramMetricFamily(
            "flywheel_incoming_store_seconds",
            "Time to write one image and its sidecar",
            buckets=buckets,
            sum_value=values[_SECONDS],
        )
        yield GaugeMetricFamily(
            "flywheel_incoming_queue_depth",
            "Images waiting to be stored",
            value=self._queue.qsize() if self._queue is not None else 0,
        )


@cache
def _collector() -> _StoreCollector:
    from prometheus_client import REGISTRY

    collector = _StoreCollector()
    REGISTRY.register(collector)
    return collector
