"""Decoding one image safely: the same rules for training data and for requests served.

:func:`decode_image` turns encoded bytes into a grayscale ``uint8`` array of the model's size,
or raises :class:`BadImage` with a reason a person can read. The reasons are the quarantine
reasons of ``prepare`` and the 400 messages of the model service.

The pixels are the image as a person sees it: an EXIF orientation (a phone's rotated photo,
an image the annotators saw upright in Label Studio, since browsers apply it) is applied
before anything else, so the label a person gave matches the pixels the model learns from.
"""

from __future__ import annotations

import hashlib
import io
import struct
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

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


# What Pillow raises when it cannot parse the bytes it was given (its plugins signal a format
# they cannot read with the first four, see ``Image.open``).
_PILLOW_FAILURES = (SyntaxError, IndexError, TypeError, struct.error, OSError, ValueError, EOFError)
# Pillow's limits on decompressed PNG text: a text chunk over them is refused, like a bomb.
_TEXT_LIMITS = ("MAX_TEXT_CHUNK", "MAX_TEXT_MEMORY")
# Pillow opens these formats but decodes them with an outside program or codec it may lack.
_NO_DECODER = ("not available", "Ghostscript")
# Formats whose frames play in time (animation); the frames of others are pages or pictures.
_ANIMATED_FORMATS = {"GIF", "PNG", "WEBP", "FLI", "AVIF"}
# Where Pillow finds an orientation (``Image.getexif``): parsed only when one may be there.
_ORIENTATION_SOURCES = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


class _TrackedBytes(io.BytesIO):
    """The bytes of a file, noting whether a reader asked for more than was left: a decoder
    that fails after that ran out of data (truncated); one that fails before, on bytes it had,
    found them damaged (corrupt)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.came_up_short = False  # a read got fewer bytes than it asked for
        self.found_nothing = False  # a read found no bytes left at all

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if size is not None and size > 0 and len(chunk) < size:
            self.came_up_short = True
            self.found_nothing = self.found_nothing or not chunk
        return chunk


def _format_of(data: bytes) -> tuple[str, object] | None:
    """The format whose signature ``data`` starts with, and Pillow's reader of it; None when no
    format claims it (formats without a signature, which Pillow tries on anything, do not)."""
    from PIL import Image

    Image.init()
    prefix = data[:16]
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        if accept is None or len(prefix) < 4:
            continue
        try:
            claimed = accept(prefix)
        except (struct.error, IndexError):  # a signature check that needs more bytes: not this
            continue
        if claimed and not isinstance(claimed, str):
            return name, factory
    return None


def diagnose(data: bytes, failure: Exception) -> BadImage:
    """Why Pillow could not decode ``data`` (it raised ``failure``), as a :class:`BadImage`.

    The file is read again by the reader of the format its first bytes announce, through a
    stream that notes whether the reader ran out of data: while parsing headers, which read
    exact sizes, any short read means the file ends early; while decoding pixels, which read in
    large blocks, only a read that finds nothing left does.
    """
    found = _format_of(data)
    if found is None:
        return BadImage("not_an_image", "not a readable image file")
    kind, factory = found
    declared = int.from_bytes(data[4:8], "little") + 8  # a RIFF file (WebP) says how long it is
    if data[:4] == b"RIFF" and len(data) < declared:
        return BadImage("truncated", f"the {kind} data ends early: {len(data)} of {declared} bytes")
    stream, opened = _TrackedBytes(data), False
    try:
        image = factory(stream, "")  # type: ignore[operator]
        opened = True
        image.load()
        error: Exception = failure  # read fine on its own: Pillow's first verdict stands
    except _PILLOW_FAILURES as exc:
        error = exc
    message = str(error) or type(error).__name__
    if any(limit in message for limit in _TEXT_LIMITS):
        return BadImage(
            "oversized_metadata", f"a {kind} text chunk is over Pillow's safety limit: {message}"
        )
    if any(missing in message for missing in _NO_DECODER):
        return BadImage("unsupported_format", f"{kind} cannot be decoded here: {message}")
    if (stream.found_nothing if opened else stream.came_up_short) or isinstance(error, EOFError):
        return BadImage("truncated", f"the {kind} data ends early ({len(data)} bytes): {message}")
    return BadImage("corrupt", f"the {kind} data is damaged: {message}")


def frames_reason(image_format: str | None, frames: int) -> BadImage:
    """An image of several frames: which one is the example is not known."""
    if image_format in _ANIMATED_FORMATS:
        return BadImage("animated", f"animated image with {frames} frames")
    return BadImage("multi_page", f"a {image_format} of {frames} pages or pictures, not one image")


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says a viewer shows it."""
    from PIL import Image

    info = image.info
    if not (any(key in info for key in _ORIENTATION_SOURCES) or hasattr(image, "tag_v2")):
        return image  # the usual case: nothing to parse
    orientation = image.getexif().get(0x0112, 1)
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return image if method is None else image.transpose(method)


def decode_image(
    data: bytes,
    *,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Decode ``data`` to a ``(size, size)`` ``uint8`` grayscale array, or raise BadImage."""
    from PIL import Image

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
            raise frames_reason(image.format, frames)
        if image.mode not in ACCEPTED_MODES:
            raise BadImage(
                "unsupported_mode",
                f"pixel mode {image.mode} (e.g. 16-bit or CMYK) is not supported; "
                f"expected one of {', '.join(sorted(ACCEPTED_MODES))}",
            )
        image.load()
        image = upright(image)
    except BadImage:
        raise
    except Image.DecompressionBombError as exc:
        raise BadImage("too_many_pixels", str(exc)) from exc
    except _PILLOW_FAILURES as exc:  # UnidentifiedImageError too: an OSError
        raise diagnose(data, exc) from exc
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
