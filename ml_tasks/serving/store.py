"""Keeping served images for annotation, off the request path.

The request handler only samples and appends to a list (:meth:`IncomingStore.offer`, which
never blocks); the images offered in one turn of the event loop go to the writer process as
one message, and that process re-encodes, hashes and writes each image to the lake with its
sidecar (:func:`ml_tasks.serving.incoming.write_incoming` says where).

The queue is bounded: when the writer falls behind (a slow or unreachable lake), new images are
dropped and counted (``flywheel_incoming_dropped_total``) instead of growing memory or slowing
inference. Write failures are counted (``flywheel_incoming_failed_total``). Both are logged as
events (``incoming_dropped``, ``incoming_store_failed``) throttled to one every few seconds,
each carrying the running total as well as the count since the last event. Either way the
requests themselves succeed.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import random
import select
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from ml_tasks.core import events
from ml_tasks.serving.incoming import IncomingImage, write_incoming
from ml_tasks.serving.metrics import (
    SLOT_BUCKETS,
    SLOT_FAILED,
    SLOT_SECONDS,
    SLOT_STORED,
    SLOTS,
    STORE_BUCKETS,
    ServingMetrics,
    serving_metrics,
    store_collector,
)


@dataclass
class _Throttle:
    """Says yes at most once per ``seconds``, and counts what it held back meanwhile."""

    seconds: float
    last: float = field(default=-1e9)
    held: int = 0

    def ready(self, count: int = 1) -> int | None:
        """Previously held back when it says yes now; else None and ``count`` more held."""
        now = time.monotonic()
        if now - self.last >= self.seconds:
            self.last, held, self.held = now, self.held, 0
            return held
        self.held += count
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

    The request path pays only an append per image: each loop turn's images are pickled
    together and written by the loop itself to a non-blocking pipe (a remainder waits, watched
    by the loop, for the writer to read). A ``multiprocessing.Queue`` would add a feeder thread
    that takes the GIL from the loop at every hand-off. The bound counts images in flight:
    offered minus finished by the writer.
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
        self._reader, writer = self._context.Pipe(duplex=False)
        self._writer: Any = writer  # kept open: the fd is ours to write without blocking
        self._fd = writer.fileno()
        os.set_blocking(self._fd, False)
        self._unsent = bytearray()
        self._watching = False
        self._max_queue = max_queue
        self._shared: Any = self._context.Array("d", SLOTS)
        self._counts: Any = self._shared.get_obj()  # read without the lock: a gauge's view
        self._pending: list[IncomingImage] = []
        self._flush_scheduled = False
        self._accepted = 0
        self.dropped = 0
        """Images dropped so far because the queue was full (the running total)."""
        self._process: Any = None
        self._drops = _Throttle(event_interval)
        store_collector().watch(self._shared, self)

    def depth(self) -> int:
        """Images offered and not yet written (or failed) by the writer."""
        return self._accepted - int(self._counts[SLOT_STORED] + self._counts[SLOT_FAILED])

    def sampled(self) -> bool:
        """Whether to keep the next image (decided per image)."""
        return self.sample_rate >= 1.0 or (
            self.sample_rate > 0.0 and random.random() < self.sample_rate
        )

    def offer(self, item: IncomingImage) -> bool:
        """Queue an image without waiting; False (and counted) when the queue is full."""
        if self.depth() >= self._max_queue:
            self._count_drops(1, item.request_id)
            return False
        self._accepted += 1
        self._pending.append(item)
        if not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # called outside the server's loop: hand it over now
                self._flush()
                return True
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return True

    def _count_drops(self, count: int, request_id: str | None) -> None:
        self.dropped += count
        self.metrics.dropped.inc(count)
        held = self._drops.ready(count)
        if held is not None:
            events.emit(
                "incoming_dropped",
                level="warning",
                queue_size=self._max_queue,
                dropped_since_last_event=held + count,
                dropped_total=self.dropped,
                request_id=request_id,
            )

    def _flush(self) -> None:
        """Hand the images offered in this turn of the loop to the writer, as one message."""
        self._flush_scheduled = False
        items, self._pending = self._pending, []
        if items:
            payload = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
            # The framing multiprocessing's Connection.recv_bytes reads on the other side.
            self._unsent += struct.pack("!i", len(payload)) + payload
        self._send()

    def _send(self) -> None:
        """Write what the pipe takes now; watch it for room when something is left."""
        try:
            while self._unsent:
                written = os.write(self._fd, self._unsent)
                del self._unsent[:written]
        except BlockingIOError:
            pass  # the pipe is full: the rest goes when the writer has read
        except BrokenPipeError:  # the writer is gone: what it had not written is dropped
            lost = self.depth()
            self._unsent.clear()
            self._accepted -= lost
            self._count_drops(lost, None)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (shutdown, tests): the next flush or close() sends the rest
        if self._unsent and not self._watching:
            self._watching = True
            loop.add_writer(self._fd, self._send)
        elif not self._unsent and self._watching:
            self._watching = False
            loop.remove_writer(self._fd)

    def start(self) -> None:
        """Start the writer process (idempotent)."""
        if self._process is None:
            self._process = self._context.Process(
                target=_write_forever,
                name="incoming-store",
                daemon=True,
                args=(self.lake_uri, self._reader, self._shared, self.event_interval),
            )
            self._process.start()

    def close(self, timeout: float = 10.0) -> int:
        """Write what is queued (for up to ``timeout`` s), stop; returns images left unwritten."""
        process, self._process = self._process, None
        if process is None:
            return 0
        deadline = time.monotonic() + timeout
        self._flush()
        end = pickle.dumps(None)
        self._unsent += struct.pack("!i", len(end)) + end
        while self._unsent and process.is_alive() and time.monotonic() < deadline:
            select.select([], [self._fd], [], max(0.0, deadline - time.monotonic()))
            self._send()
        process.join(max(0.0, deadline - time.monotonic()))
        left = 0
        if process.is_alive():  # far behind: it had until the deadline
            process.terminate()
            process.join(5)
            left = max(1, self.depth())
            events.emit("incoming_unwritten", level="warning", images=left)
        return left


def _write_forever(lake_uri: str, items: Any, shared: Any, event_interval: float) -> None:
    """The writer process: take images off the queue and write them until told to stop."""
    import bisect
    import os
    import signal

    from ml_tasks.core.lake import open_lake

    os.nice(19)
    # Signals to the process group (Ctrl-C, a test's killpg) are the server's to handle: it
    # drains the queue and then tells us to stop. If the server dies without that, we notice
    # (a new parent) and stop too, rather than wait forever.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    events.configure("serve")
    failures = _Throttle(event_interval)
    failed = 0
    lake = None
    while True:
        if not items.poll(1.0):
            if os.getppid() != parent:
                return
            continue
        try:
            batch = items.recv()
        except EOFError:  # the server closed its end without saying stop
            return
        if batch is None:
            return
        for item in batch:
            started = time.perf_counter()
            try:
                if lake is None:
                    lake = open_lake(lake_uri)
                write_incoming(lake, item)
                outcome = SLOT_STORED
            except Exception as exc:  # a broken lake must never stop serving: count, log
                outcome = SLOT_FAILED
                failed += 1
                held = failures.ready()
                if held is not None:
                    events.emit(
                        "incoming_store_failed",
                        level="error",
                        lake=lake_uri,
                        error=f"{type(exc).__name__}: {exc}",
                        failed_since_last_event=held + 1,
                        failed_total=failed,
                        request_id=item.request_id,
                    )
            seconds = time.perf_counter() - started
            with shared.get_lock():
                shared[outcome] += 1
                shared[SLOT_SECONDS] += seconds
                shared[SLOT_BUCKETS + bisect.bisect_left(STORE_BUCKETS, seconds)] += 1
