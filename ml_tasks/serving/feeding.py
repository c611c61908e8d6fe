"""Production traffic for the annotation loop: real digits, lightly transformed, sent to the
model service's v1 ``:predict`` endpoint in small batches (``python -m ml_tasks.feed``).

Each image is one of scikit-learn's handwritten digits (shipped offline) shifted by up to a
pixel and noised a little, so it is new content the model has not seen; the answers are
counted against the true digit, a live accuracy a person can watch drift.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml_tasks.core.step import StepError
from ml_tasks.data.images import encode_png

DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass
class FeedResult:
    """What feeding sent and how the service answered (the command's JSON result)."""

    sent: int = 0
    answered: int = 0
    correct: int = 0
    refused: int = 0
    model_versions: list[str] = field(default_factory=list)
    live_accuracy: float | None = None
    """Share of answers that named the true digit, once the last batch is answered."""


def transformed_digits(count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """``count`` (true label, PNG) pairs: real digits, each shifted and noised a little."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for _ in range(count):
        index = int(rng.integers(len(digits.images)))
        image = digits.images[index] * (255.0 / 16.0)
        dy, dx = (int(v) for v in rng.integers(-1, 2, size=2))
        image = np.roll(image, (dy, dx), axis=(0, 1))
        if dy:  # what rolled over the edge is blank paper, not the other side of the digit
            image[0 if dy > 0 else -1, :] = 0
        if dx:
            image[:, 0 if dx > 0 else -1] = 0
        image = image + rng.normal(0, 6, size=image.shape)
        pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        yield str(int(digits.target[index])), encode_png(pixels)


def predict(url: str, model: str, images: list[bytes], timeout: float) -> dict[str, Any]:
    """One v1 ``:predict`` request and its answer (``predictions``, ``model_version``); the
    service's 4xx message becomes a :class:`StepError`."""
    body = {"instances": [{"b64": base64.b64encode(data).decode()} for data in images]}
    request = urllib.request.Request(
        f"{url.rstrip('/')}/v1/models/{model}:predict",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return dict(json.loads(response.read()))
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise _service_error(url, exc) from exc


def _service_error(url: str, exc: Exception) -> StepError:
    """What to tell the person feeding: the service's own 4xx/5xx message, or how to start it."""
    if isinstance(exc, urllib.error.HTTPError):
        detail = exc.read().decode(errors="replace")[:300]
        return StepError(f"the model service at {url} answered {exc.code}: {detail}")
    reason = getattr(exc, "reason", exc)
    return StepError(
        f"cannot reach the model service at {url} ({reason}): start it with "
        "`python -m ml_tasks.serve` (or `make stack-up`) and pass its address with --url"
    )


def feed(
    url: str,
    model: str,
    *,
    count: int,
    batch: int = 8,
    seed: int = 0,
    timeout: float = 30.0,
    progress: bool = True,
) -> FeedResult:
    """Send ``count`` transformed digits in batches of ``batch``; count the answers."""
    from tqdm import tqdm

    result = FeedResult()
    pending: list[tuple[str, bytes]] = []
    with tqdm(total=count, unit="img", desc="feeding", disable=not progress) as bar:
        for item in transformed_digits(count, seed):
            pending.append(item)
            if len(pending) == batch:
                _send(url, model, pending, timeout, result)
                bar.update(len(pending))
                pending = []
        if pending:
            _send(url, model, pending, timeout, result)
            bar.update(len(pending))
    if result.answered:
        result.live_accuracy = round(result.correct / result.answered, 4)
    return result


def _send(
    url: str, model: str, items: list[tuple[str, bytes]], timeout: float, result: FeedResult
) -> None:
    result.sent += len(items)
    answer = predict(url, model, [data for _, data in items], timeout)
    for (label, _), prediction in zip(items, answer["predictions"], strict=True):
        result.answered += 1
        result.correct += int(str(prediction.get("label")) == label)
    version = str(answer.get("model_version") or "")
    if version and version not in result.model_versions:
        result.model_versions.append(version)
