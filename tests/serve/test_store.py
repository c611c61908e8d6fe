"""The incoming-image store in-process: the contract on disk, sampling, a full queue, failures,
and a model failure answered without internals."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml_tasks.core.lake import LocalLake
from ml_tasks.data.images import content_hash, encode_png
from ml_tasks.serving.incoming import IncomingImage, as_png, write_incoming
from ml_tasks.serving.metrics import serving_metrics
from ml_tasks.serving.store import IncomingStore

WHEN = datetime(2026, 11, 27, 23, 59, 58, 123000, tzinfo=UTC)


def item(source: bytes | np.ndarray, request_id: str = "r1") -> IncomingImage:
    return IncomingImage(
        source=source,
        prediction="3",
        score=0.9,
        probabilities={"3": 0.9, "5": 0.1},
        model_name="digits",
        model_version="7",
        request_id=request_id,
        received_at=WHEN,
    )


def counter(name: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name) or 0.0


def test_written_per_contract(tmp_path: Path) -> None:
    store = IncomingStore((tmp_path / "lake").as_uri())
    store.start()
    pixels = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    png = encode_png(np.full((8, 8), 7, dtype=np.uint8))
    stored = counter("flywheel_incoming_stored_total")
    assert store.offer(item(png, "png")) and store.offer(item(pixels, "pixels"))
    assert store.close(timeout=30) == 0
    assert counter("flywheel_incoming_stored_total") - stored == 2
    day = tmp_path / "lake" / "incoming" / "2026-11-27"
    assert (day / f"{content_hash(png)[:16]}.png").read_bytes() == png
    pixel_png = as_png(pixels)
    stem = f"incoming/2026-11-27/{content_hash(pixel_png)[:16]}"
    assert (tmp_path / "lake" / f"{stem}.png").read_bytes() == pixel_png
    sidecar = json.loads((tmp_path / "lake" / f"{stem}.json").read_text())
    assert sidecar == {
        "content_hash": content_hash(pixel_png),
        "prediction": "3",
        "score": 0.9,
        "probabilities": {"3": 0.9, "5": 0.1},
        "model_name": "digits",
        "model_version": "7",
        "request_id": "pixels",
        "received_at": "2026-11-27T23:59:58.123+00:00",
        "image_key": f"{stem}.png",
    }


def test_sidecar_is_written_after_its_image(tmp_path: Path) -> None:
    writes: list[str] = []

    class RecordingLake(LocalLake):
        def write_bytes(self, key: str, data: bytes) -> None:
            writes.append(key)
            super().write_bytes(key, data)

    write_incoming(RecordingLake(tmp_path), item(encode_png(np.zeros((8, 8), np.uint8))))
    assert [Path(k).suffix for k in writes] == [".png", ".json"]


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    store = IncomingStore((tmp_path / "lake").as_uri(), max_queue=2)
    dropped = counter("flywheel_incoming_dropped_total")
    png = encode_png(np.zeros((8, 8), dtype=np.uint8))
    began = time.monotonic()
    # The writer is not started yet: two images fit in the queue, the rest are dropped.
    results = [store.offer(item(png, f"r{i}")) for i in range(8)]
    assert time.monotonic() - began < 1.0
    assert results == [True, True] + [False] * 6
    assert counter("flywheel_incoming_dropped_total") - dropped == 6
    store.start()
    assert store.close(timeout=30) == 0
    assert len(list((tmp_path / "lake" / "incoming").rglob("*.json"))) == 1  # same image twice


def test_failed_writes_are_counted_and_logged(tmp_path: Path, flywheel_home: Path) -> None:
    from ml_tasks.core import events

    (tmp_path / "not-a-folder").write_text("a file where the lake's folder should be")
    store = IncomingStore((tmp_path / "not-a-folder").as_uri())
    store.start()
    failed = counter("flywheel_incoming_failed_total")
    for i in range(3):
        store.offer(item(encode_png(np.zeros((8, 8), dtype=np.uint8)), f"f{i}"))
    assert store.close(timeout=30) == 0
    assert counter("flywheel_incoming_failed_total") - failed == 3
    logged = [
        e
        for e in events.read_events(flywheel_home / "logs" / "events.jsonl")
        if e["action"] == "incoming_store_failed"
    ]
    # Throttled: one line for the first failure, not one per image.
    assert len(logged) == 1 and logged[0]["lake"].endswith("not-a-folder")


@pytest.mark.parametrize(("rate", "low", "high"), [(0.0, 0, 0), (1.0, 1000, 1000), (0.3, 220, 380)])
def test_sampling_rate(rate: float, low: int, high: int) -> None:
    store = IncomingStore("file:///unused", sample_rate=rate, metrics=serving_metrics())
    assert low <= sum(store.sampled() for _ in range(1000)) <= high


def test_model_failure_is_a_500_without_internals() -> None:
    from kserve.errors import InferenceError

    from ml_tasks.serving.batching import TickBatcher
    from ml_tasks.serving.champion import LoadedModel
    from ml_tasks.serving.inputs import Limits, parse_v1
    from ml_tasks.serving.predictor import ClassifierModel

    class BrokenClassifier:
        classes = ("0", "1")
        image_size = 8
        version = "1"

        def predict_proba(self, pixels: Any) -> Any:
            raise RuntimeError("secret internal detail at /srv/model.py:42")

    model = ClassifierModel("digits", "models:/digits/1")
    broken = BrokenClassifier()
    limits = Limits(image_size=8)
    model.swap_in(
        LoadedModel(broken, limits, TickBatcher(broken.predict_proba)),
        model_uri="models:/digits/1",
        load_seconds=0.0,
    )
    batch = parse_v1({"instances": [[[0.0] * 8] * 8]}, limits)
    with pytest.raises(InferenceError) as raised:
        asyncio.run(model.predict(batch, {"x-request-id": "abc"}))
    assert str(raised.value) == "internal error while predicting (request id abc)"


def test_drop_events_carry_the_running_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml_tasks.core import events

    log = tmp_path / "events.jsonl"
    monkeypatch.setattr(events._state, "path", log)  # what events.configure sets, undone after
    store = IncomingStore((tmp_path / "lake").as_uri(), max_queue=1, event_interval=0.3)
    png = encode_png(np.zeros((8, 8), dtype=np.uint8))
    # The writer is not started: one image fits, every other one is dropped.
    assert store.offer(item(png, "kept"))
    for i in range(6):
        assert not store.offer(item(png, f"a{i}"))
    time.sleep(0.4)  # the next drop may be reported again
    assert not store.offer(item(png, "b"))
    logged = [e for e in events.read_events(log) if e["action"] == "incoming_dropped"]
    assert [(e["dropped_since_last_event"], e["dropped_total"]) for e in logged] == [(1, 1), (6, 7)]


def test_storing_adds_no_thread_to_the_serving_process(tmp_path: Path) -> None:
    """A thread in the server (a multiprocessing.Queue's feeder) takes turns with the event loop
    for the GIL on every hand-off: the loop itself hands the images over."""
    import threading

    store = IncomingStore((tmp_path / "lake").as_uri(), max_queue=10_000)
    store.start()
    stored = counter("flywheel_incoming_stored_total")
    rng = np.random.default_rng(0)
    pngs = [encode_png(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(64)]
    threads = threading.active_count()

    async def serve() -> int:
        accepted = 0
        for turn in range(40):  # 40 turns of the loop, 16 requests of one image each
            accepted += sum(store.offer(item(pngs[i % 64], f"t{turn}-{i}")) for i in range(16))
            assert threading.active_count() == threads
            await asyncio.sleep(0)
        return accepted

    assert asyncio.run(serve()) == 640
    assert store.close(timeout=60) == 0
    assert counter("flywheel_incoming_stored_total") - stored == 640
