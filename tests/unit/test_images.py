import io

import numpy as np
import pytest
from PIL import Image

from ml_tasks.data.images import BadImage, decode_image, encode_png


def png(mode: str, size: tuple[int, int] = (8, 8), color: object = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG" if mode != "CMYK" else "JPEG")
    return buffer.getvalue()


def test_grayscale_png_round_trips() -> None:
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    assert np.array_equal(decode_image(encode_png(pixels), size=8), pixels)


def test_rgb_is_converted_and_resized() -> None:
    out = decode_image(png("RGB", (32, 32), (255, 255, 255)), size=8)
    assert out.shape == (8, 8) and out.dtype == np.uint8 and (out == 255).all()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image", "not_an_image"),
        (encode_png(np.zeros((8, 8), np.uint8))[:40], "truncated"),
        (png("I;16"), "unsupported_mode"),
        (png("CMYK"), "unsupported_mode"),
    ],
)
def test_bad_images_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadImage) as err:
        decode_image(data, size=8)
    assert err.value.reason == reason
    assert str(err.value)


def test_too_many_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(BadImage) as err:
        decode_image(png("L", (300, 300)), size=8, max_pixels=10_000)
    assert err.value.reason == "too_many_pixels"


def test_too_many_bytes() -> None:
    with pytest.raises(BadImage) as err:
        decode_image(png("L", (64, 64)), size=8, max_bytes=10)
    assert err.value.reason == "too_many_bytes"


def test_animated_images_are_refused() -> None:
    frames = [Image.new("L", (8, 8), c) for c in (0, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(BadImage) as err:
        decode_image(buffer.getvalue(), size=8)
    assert err.value.reason == "animated"
