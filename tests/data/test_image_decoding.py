"""Decoding one image: a bad one is refused with the reason that fits it, every format Pillow
writes here is decoded or refused, and EXIF orientation is applied as a viewer shows it."""

import numpy as np
import pytest
from PIL import Image

from ml_tasks.data.images import BadImage, decode_image
from tests.data.bad_input import (
    bad_images,
    encoded,
    format_samples,
    pattern,
)


@pytest.mark.parametrize("name", sorted(bad_images()))
def test_each_bad_image_is_refused_with_the_reason_that_fits(name: str) -> None:
    data, reason = bad_images()[name]
    with pytest.raises(BadImage) as err:
        decode_image(data, size=8)
    assert (err.value.reason, name) == (reason, name)
    assert str(err.value)


@pytest.mark.parametrize("fmt", sorted(format_samples()))
def test_every_format_pillow_writes_here_is_decoded_or_refused_with_its_reason(fmt: str) -> None:
    data, reason = format_samples()[fmt]
    if reason is None:
        pixels = decode_image(data, size=8)
        assert pixels.shape == (8, 8) and pixels.dtype == np.uint8
    else:
        with pytest.raises(BadImage) as err:
            decode_image(data, size=8)
        assert err.value.reason == reason


VIEWED = {  # EXIF orientation -> what a viewer shows of the stored pixels
    1: lambda p: p,
    2: np.fliplr,
    3: lambda p: np.rot90(p, 2),
    4: np.flipud,
    5: np.transpose,
    6: lambda p: np.rot90(p, -1),
    7: lambda p: np.rot90(p, 2).T,
    8: lambda p: np.rot90(p, 1),
}


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG"])  # Pillow itself turns a TIFF
@pytest.mark.parametrize("orientation", sorted(VIEWED))
def test_exif_orientation_is_applied_as_a_viewer_shows_the_image(
    fmt: str, orientation: int
) -> None:
    stored = pattern(8, seed=12)
    exif = Image.Exif()
    exif[0x0112] = orientation
    options: dict[str, object] = {"PNG": {}, "WEBP": {"lossless": True}, "JPEG": {"quality": 100}}[
        fmt
    ]
    data = encoded(Image.fromarray(stored), fmt, exif=exif, **options)
    decoded = decode_image(data, size=8).astype(int)
    error = np.abs(decoded - VIEWED[orientation](stored)).max()
    assert error <= (8 if fmt == "JPEG" else 0)  # JPEG is lossy, a little
