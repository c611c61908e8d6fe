"""Decoding one image safely: the same rules for training data and for requests served.

:func:`decode_image` turns encoded bytes into a grayscale ``uint8`` array of the model's size,
or raises :class:`BadImage` with a reason a person can read. The reasons are the quarantine
reasons of ``prepare`` and the 400 messages of the model service.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np

# Modes whose pixels convert to 8-bit grayscale without losing meaning.
ACCEPTED_MODES = {"1", "L", "LA", "P", "RGB", "RGBA"}
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_BYTES = 20 * 1024 * 1024


class BadImage(ValueError):
    """Bytes that are not a usable image; ``reason`` is a short code, ``str()`` the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def content_hash(data: bytes) -> str:
    """The content address of a file: names it in the dataset and keys every cache."""
    return hashlib.sha256(data).hexdigest()


_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def sniff_format(data: bytes) -> str | None:
    """The image format the first bytes announce, if any (to tell truncated from junk)."""
    for signature, kind in _SIGNATURES.items():
        if data.startswith(signature):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(
    data: bytes,
    *,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Decode ``data`` to a ``(size, size)`` ``uint8`` grayscale array, or raise BadImage."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadImage("empty", "the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise BadImage("too_many_bytes", f"{len(data)} bytes is over the limit of {max_bytes}")
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise BadImage(
                "too_many_pixels",
                f"{width}x{height} pixels is over the limit of {max_pixels} pixels",
            )
        frames = int(getattr(image, "n_frames", 1))
        if frames > 1:
            raise BadImage("animated", f"animated image with {frames} frames")
        if image.mode not in ACCEPTED_MODES:
            raise BadImage(
                "unsupported_mode",
                f"pixel mode {image.mode} (e.g. 16-bit or CMYK) is not supported; "
                f"expected one of {', '.join(sorted(ACCEPTED_MODES))}",
            )
        image.load()
    except BadImage:
        raise
    except UnidentifiedImageError as exc:
        kind = sniff_format(data)
        if kind is not None:
            raise BadImage("truncated", f"starts like a {kind} but is broken or truncated") from exc
        raise BadImage("not_an_image", "not a readable image file") from exc
    except Image.DecompressionBombError as exc:
        raise BadImage("too_many_pixels", str(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage("truncated", f"the image data is broken or truncated: {exc}") from exc
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        # Digits are light ink on a dark background: transparency becomes background.
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    if image.mode != "L":
        image = image.convert("L")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    # tobytes + frombuffer: several times cheaper than np.asarray(image) for small images.
    return np.frombuffer(image.tobytes(), dtype=np.uint8).reshape(size, size)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a grayscale ``uint8`` array; deterministic for a given Pillow."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
