"""Decoding a request's images within a budget, and off the event loop when they are large.

Decoding is CPU work. On the event loop, one request of many large images blocks every other
request, health checks included, for as long as it decodes (a 16 kB PNG can hold 16 million
pixels). Two defences:

- a budget per request, summed over its images (decoded pixels, encoded bytes), checked from
  the image headers before any pixel is decoded, so what one request can cost is bounded;
- a decoding process for requests with large images: the loop only awaits a future. A thread
  would not do: Pillow releases the GIL only inside its C decoder, and the Python around it
  (opening, converting, the checks) takes turns with the loop for the GIL; a process only takes
  a core, which the kernel shares without holding the loop up.

Small requests (the common case, a few small digits) decode inline: a round trip to another
process would cost more than the decoding itself.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from ml_tasks.data.images import BadImage, decode_image
from ml_tasks.serving.inputs import BadInput, Batch, Limits

INLINE_PIXELS = 256 * 256
"""Requests whose images hold more decoded pixels than this go to the decoding process."""
INLINE_TEXT = 256 * 1024
"""... and so do requests with more base64 text than this (its decoding is work too)."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_bytes(text: str | bytes, where: str, limits: Limits) -> bytes:
    """The encoded image inside a base64 string (bytes pass through), within the byte limit."""
    if isinstance(text, bytes):
        return text
    # Refuse before decoding: base64 is 4 characters per 3 bytes.
    if len(text) > (limits.max_image_bytes + 2) // 3 * 4 + len(text) // 64 * 2:
        raise BadInput(
            "too_many_bytes",
            f"{where}: about {len(text) * 3 // 4} bytes is over the limit of "
            f"{limits.max_image_bytes} bytes per image",
        )
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInput("not_base64", f"{where}: not valid base64 ({exc})") from exc


def declared_pixels(data: bytes) -> int:
    """Width x height as the image's header declares it (0 when there is no readable header:
    decoding then says what is wrong). PNGs are read straight from their IHDR chunk, cheaply."""
    if data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width) * int(height)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        return 0  # not readable: decode_image raises the BadImage that names the problem
    return width * height


def check_budget(datas: Sequence[bytes], wheres: Sequence[str], limits: Limits) -> int:
    """Refuse a request whose images, together, are over the budget; returns their pixels."""
    total_bytes = sum(len(data) for data in datas)
    if total_bytes > limits.max_request_image_bytes:
        raise BadInput(
            "request_too_many_bytes",
            f"the images of this request hold {total_bytes} bytes, over the limit of "
            f"{limits.max_request_image_bytes} per request",
        )
    total = 0
    for data, where in zip(datas, wheres, strict=True):
        pixels = declared_pixels(data)
        if pixels > limits.max_pixels:
            raise BadInput(
                "too_many_pixels",
                f"{where}: {pixels} pixels is over the limit of {limits.max_pixels} pixels",
            )
        total += pixels
    if total > limits.max_request_pixels:
        raise BadInput(
            "request_too_many_pixels",
            f"the images of this request hold {total} pixels, over the limit of "
            f"{limits.max_request_pixels} per request",
        )
    return total


def decode_images(
    encoded: Sequence[str | bytes], wheres: Sequence[str], limits: Limits
) -> tuple[np.ndarray, list[bytes]]:
    """Base64 text (or bytes) → ``(N, size, size)`` uint8 pixels and the encoded bytes.

    Checks the whole request's budget first, then decodes with the rules training data passes.
    Runs inline or in the decoding process (so it is a plain module-level function).
    """
    datas = [image_bytes(text, where, limits) for text, where in zip(encoded, wheres, strict=True)]
    check_budget(datas, wheres, limits)
    return _decode_all(datas, wheres, limits), datas


def _decode_all(datas: Sequence[bytes], wheres: Sequence[str], limits: Limits) -> np.ndarray:
    size = limits.image_size
    pixels = np.empty((len(datas), size, size), dtype=np.uint8)
    for i, (data, where) in enumerate(zip(datas, wheres, strict=True)):
        try:
            pixels[i] = decode_image(
                data, size=size, max_pixels=limits.max_pixels, max_bytes=limits.max_image_bytes
            )
        except BadImage as exc:
            raise BadInput(exc.reason, f"{where}: {exc}") from exc
    return pixels


def _warm() -> None:
    """Run once in a new decoding process, so the first large request does not pay the imports."""
    from ml_tasks.data.images import encode_png

    decode_image(encode_png(np.zeros((1, 1), dtype=np.uint8)), size=1)


class Decoder:
    """Decodes a batch's images inline when they are small, else in a decoding process."""

    def __init__(self, limits: Limits | None = None, workers: int = 1) -> None:
        self.limits = limits
        """The limits of a :meth:`decode` not given its own (each model has its image size)."""
        self.workers = workers
        self._pool: Any = None
        self.offloaded = 0
        """Requests decoded in the decoding process (for tests and the curious)."""

    def start(self) -> None:
        """Start the decoding process(es) and wait until they can decode."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
            )
            for future in [self._pool.submit(_warm) for _ in range(self.workers)]:
                future.result(timeout=120)

    def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    async def decode(self, batch: Batch, limits: Limits | None = None) -> None:
        """Fill the rows and sources of ``batch``'s encoded images (raises BadInput)."""
        if not batch.encoded:
            return
        limits = limits or self.limits
        assert limits is not None, "a Decoder without limits decodes with given ones"
        rows = [row for row, _, _ in batch.encoded]
        wheres = [where for _, where, _ in batch.encoded]
        texts: list[str | bytes] = [text for _, _, text in batch.encoded]
        if self._pool is None or sum(len(text) for text in texts) <= INLINE_TEXT:
            datas = [image_bytes(t, w, limits) for t, w in zip(texts, wheres, strict=True)]
            pixels = check_budget(datas, wheres, limits)
            if self._pool is None or pixels <= INLINE_PIXELS:
                decoded = _decode_all(datas, wheres, limits)
            else:
                decoded, _ = await self._offload(list(datas), wheres, limits)
        else:
            decoded, datas = await self._offload(texts, wheres, limits)
        batch.pixels[rows] = decoded / np.float32(255.0)
        for row, data in zip(rows, datas, strict=True):
            batch.sources[row] = data
        batch.encoded = []

    async def _offload(
        self, encoded: list[str | bytes], wheres: list[str], limits: Limits
    ) -> tuple[np.ndarray, list[bytes]]:
        self.offloaded += 1
        loop = asyncio.get_running_loop()
        result: tuple[np.ndarray, list[bytes]] = await loop.run_in_executor(
            self._pool, decode_images, encoded, wheres, limits
        )
        return result
