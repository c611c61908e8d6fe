"""A served image kept for annotation, and where it lands in the lake.

The contract the annotation loop reads, one pair of objects per image:

- ``incoming/<YYYY-MM-DD>/<content_hash[:16]>.png``: the image as PNG (the request's own bytes
  when they are a PNG, else a lossless re-encoding of the decoded image; pixel-array inputs
  become an 8-bit grayscale PNG);
- ``incoming/<YYYY-MM-DD>/<content_hash[:16]>.json``: ``content_hash`` (sha256 of the PNG),
  ``prediction``, ``score``, ``probabilities``, ``model_name``, ``model_version``,
  ``request_id``, ``received_at`` (ISO UTC), ``image_key``; written after the image, so a
  sidecar means its image is complete. The same image sent twice has the same key: the second
  write replaces the first (the newest prediction wins), it never duplicates.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from ml_tasks.data.images import content_hash, encode_png

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
