"""Feed the loop: send real images through the model service, as production traffic would.

The annotation loop starts from the images the model service keeps in the lake's ``incoming/``
(a ``--sample-rate`` share of what it is asked to predict). On a laptop nobody sends it any, so
this command plays production: scikit-learn's handwritten digits (shipped offline), each lightly
transformed (shifted by up to a pixel, a little noise) so that they are new images the model has
not seen, sent to the service's v1 ``:predict`` endpoint in small batches. It reports how many
were answered and how often the champion's label matched the true digit, a live accuracy a
person can watch drift.

    python -m ml_tasks.feed --url http://127.0.0.1:8085 --count 120

When ``incoming/`` holds ``min_images`` of them (the intake DAG's param, 100 by default), the
intake's sensor fires.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml_tasks.core.step import StepError, add_result_option, positive_int, run_step
from ml_tasks.data.images import encode_png

DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass
class FeedResult:
    sent: int = 0
    answered: int = 0
    correct: int = 0
    refused: int = 0
    model_versions: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        accuracy = round(self.correct / self.answered, 4) if self.answered else None
        return {**asdict(self), "live_accuracy": accuracy}


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
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise StepError(f"the model service at {url} answered {exc.code}: {detail}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StepError(
            f"cannot reach the model service at {url} ({reason}): start it with "
            "`python -m ml_tasks.serve` (or `make stack-up`) and pass its address with --url"
        ) from exc


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ml_tasks.feed",
        description="Send real, lightly transformed handwritten digits through the model "
        "service, as production traffic would: the service keeps a sample of them in the "
        "lake's incoming/, which feeds the annotation loop (the intake DAG starts at "
        "min_images, 100 by default).",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("FLYWHEEL_SERVE_URL", DEFAULT_URL),
        help="the model service (default: FLYWHEEL_SERVE_URL or %(default)s)",
    )
    parser.add_argument(
        "--model", help="model name in the URL (default: FLYWHEEL_MODEL_NAME, else digits)"
    )
    parser.add_argument(
        "--count", type=positive_int, default=100, help="images to send (default: %(default)s)"
    )
    parser.add_argument(
        "--batch", type=positive_int, default=8, help="images per request (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="which digits and transforms (default: %(default)s)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_result_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = args.model or os.environ.get("FLYWHEEL_MODEL_NAME", "digits")
    result_path: Path | None = args.result_path

    def body() -> dict[str, Any]:
        done = feed(
            args.url,
            model,
            count=args.count,
            batch=args.batch,
            seed=args.seed,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
        return done.to_json()

    return run_step("feed", body, result_path=result_path, context={"url": args.url})


if __name__ == "__main__":
    sys.exit(main())
