"""Images to start from: scikit-learn's bundled digits, and synthetic digits of any count and size.

Files are content-addressed (``<class>/<hash>.png``), so writing the same image twice is a no-op
and the digits always hash to the same DVC version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ml_tasks.data.images import content_hash, encode_png


def image_name(data: bytes, suffix: str = ".png") -> str:
    """The content-addressed file name of an image: the same bytes always get the same name."""
    return content_hash(data)[:16] + suffix


def write_image(folder: Path, label: str, data: bytes) -> Path:
    """Store one encoded image under its class folder; a no-op when it is already there."""
    target = folder / label / image_name(data)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target


def write_digits(folder: Path) -> int:
    """Write scikit-learn's bundled handwritten digits as PNGs by class; returns the count."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    names = set()
    for image, label in zip(pixels, digits.target, strict=True):
        names.add(write_image(folder, str(int(label)), encode_png(image)))
    return len(names)


def synthesize(folder: Path, *, count: int, size: int = 8, classes: int = 10, seed: int = 0) -> int:
    """Write ``count`` distinct synthetic images: class k is a bright bar at a k-dependent place.

    Learnable but not trivial (noise, jitter), so training and serving benchmarks exercise a
    real model; unique by construction (a per-image noise pattern), so counts are exact.
    """
    rng = np.random.default_rng(seed)
    written = 0
    for i in range(count):
        label = i % classes
        image = rng.integers(0, 60, size=(size, size), dtype=np.uint8)
        row = (label * size) // classes
        shift = int(rng.integers(-1, 2)) if size > 4 else 0
        row = min(max(row + shift, 0), size - 1)
        if label % 2:
            image[:, row] = rng.integers(180, 256, size=size, dtype=np.uint8)
        else:
            image[row, :] = rng.integers(180, 256, size=size, dtype=np.uint8)
        image[0, 0] = i % 251  # a per-image mark keeps every file distinct
        image[0, 1] = (i // 251) % 251
        write_image(folder, str(label), encode_png(image))
        written += 1
    return written
