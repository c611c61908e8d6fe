"""What the serving tests share: the routes, payload builders, and a storing server's env."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from ml_tasks.data.images import decode_image, encode_png
from tests.serve.conftest import MODEL_NAME

V1 = f"/v1/models/{MODEL_NAME}:predict"
V2 = f"/v2/models/{MODEL_NAME}/infer"
BUCKET = "flywheel-serve"
SIDECAR_FIELDS = {
    "content_hash",
    "prediction",
    "score",
    "probabilities",
    "model_name",
    "model_version",
    "request_id",
    "received_at",
    "image_key",
}
# The storing server's limits: small enough that the bad-request tests can cross each.
LIMITS = [
    "--max-image-bytes",
    "65536",
    "--max-pixels",
    "1000000",
    "--max-batch",
    "32",
    "--max-request-bytes",
    "2000000",
]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def jpeg(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((32, 32)).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def big_png(side: int, noise: bool) -> bytes:
    rng = np.random.default_rng(1)
    pixels = (
        rng.integers(0, 256, (side, side), dtype=np.uint8)
        if noise
        else np.zeros((side, side), dtype=np.uint8)
    )
    return encode_png(pixels)


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FLYWHEEL_LAKE_URI": f"s3://{BUCKET}",
    }


def expected(classifier: Any, encoded: list[bytes]) -> np.ndarray:
    pixels = np.stack([decode_image(data, size=8) for data in encoded]) / 255.0
    result: np.ndarray = classifier.predict_proba(pixels)
    return result


def pixel_array(value: Any = 0.5, side: int = 8) -> list[list[Any]]:
    """A pixel-array instance: side x side of ``value``."""
    return [[value] * side for _ in range(side)]


def small_png() -> bytes:
    """A small valid 8x8 PNG."""
    return encode_png(np.full((8, 8), 200, dtype=np.uint8))


def decoded(data: bytes) -> np.ndarray:
    """An encoded image's RGB pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
