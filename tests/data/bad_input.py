"""A corpus of bad and awkward input for prepare, generated here: nothing is downloaded.

:func:`build_corpus` writes a dataset folder holding every kind of entry prepare must cope with
(label conflicts, duplicates, symlinks in and out of the folder, dangling and looping links, a
FIFO, hidden files and folders, broken, truncated and odd images, and one image in every format
Pillow can both write and open here) and returns what prepare must do with each entry it is
offered. The tests compare prepare's result with it, entry by entry.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from ml_tasks.data.synthetic import synthesize

SYSTEM_FILE = "/etc/passwd"  # a link to it must not bring its bytes into the lake
QUARANTINED_AS_LOOSE = ("quarantined", "no_class_folder")
UNKNOWN_CLASS = ("quarantined", "unknown_class")


@dataclass(frozen=True)
class Verdict:
    """What prepare must do with one entry: ``prepared`` (``why`` is the label),
    ``quarantined`` or ``skipped`` (``why`` is the reason code)."""

    outcome: str
    why: str


def pattern(size: int = 8, seed: int = 0) -> np.ndarray:
    """A grayscale image with no symmetry, so a rotation or a flip shows."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 120, (size, size), dtype=np.uint8)
    image[0, :] = 255  # a bright top row and left column: orientation is visible
    image[:, 0] = 200
    return image


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def replace_idat(png: bytes, garbage: bytes) -> bytes:
    """``png`` with its pixel data replaced by ``garbage`` under a valid checksum: damaged, not
    short (the file still ends with its IEND chunk)."""
    start = png.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[start : start + 4])
    return png[:start] + png_chunk(b"IDAT", garbage) + png[start + 12 + length :]


def noise(size: int = 64, seed: int = 1) -> Image.Image:
    """Incompressible pixels: files long enough to cut in the middle of the pixel data."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), np.uint8))


def frames(fmt: str, count: int = 3, **options: object) -> bytes:
    images = [Image.new("L", (8, 8), 40 * k) for k in range(count)]
    return encoded(images[0], fmt, save_all=True, append_images=images[1:], **options)


def format_samples() -> dict[str, tuple[bytes, str | None]]:
    """One small image in every format Pillow can write and open here: format -> (bytes, the
    quarantine reason prepare must give, or None when it must prepare it).

    Formats whose writer is missing here (no plugin handler, no mode it can write) are left
    out; the ones Pillow opens but cannot decode without an outside program (EPS needs
    Ghostscript) must be quarantined as ``unsupported_format``.
    """
    from PIL import EpsImagePlugin

    Image.init()
    samples: dict[str, tuple[bytes, str | None]] = {}
    for seed, fmt in enumerate(sorted(Image.SAVE)):
        source = Image.fromarray(pattern(8, seed=100 + seed))  # no two formats share bytes
        for mode in ("L", "RGB", "RGBA", "P", "1"):
            try:
                data = encoded(source.convert(mode), fmt)
                opened = Image.open(io.BytesIO(data)).format
            except (OSError, ValueError, KeyError):  # this format cannot write this mode here
                continue
            if opened is not None:  # written, and Pillow can open what it wrote
                expected: str | None = None
                if fmt == "SPIDER":
                    expected = "unsupported_mode"  # 32-bit float pixels
                elif fmt == "EPS" and not EpsImagePlugin.has_ghostscript():
                    expected = "unsupported_format"
                samples[fmt] = (data, expected)
            break
    return samples


def bad_images() -> dict[str, tuple[bytes, str]]:
    """Files that are not usable images, by name, with the reason prepare must give."""
    cut_png = encoded(noise(), "PNG")
    text = PngImagePlugin.PngInfo()
    text.add_text("comment", "x" * (3 * 1024 * 1024), zip=True)  # 3 MB once decompressed
    flipped = bytearray(encoded(noise(8), "PNG"))
    flipped[20] ^= 0x01  # inside the header chunk: its checksum no longer matches
    return {
        "empty.png": (b"", "empty"),
        "notes.png": (b"hello, not an image", "not_an_image"),
        "cut-in-header.png": (cut_png[:40], "truncated"),
        "cut-in-pixels.png": (cut_png[: len(cut_png) // 2], "truncated"),
        "cut.jpg": (encoded(noise(), "JPEG")[:600], "truncated"),
        "cut.gif": (encoded(noise(), "GIF")[:900], "truncated"),
        "cut.tif": (encoded(noise(), "TIFF")[:2000], "truncated"),
        "cut.bmp": (encoded(noise(), "BMP")[:2000], "truncated"),
        "cut.webp": (encoded(noise(), "WEBP", lossless=True)[:1000], "truncated"),
        "bad-checksum.png": (bytes(flipped), "corrupt"),
        "bad-pixels.png": (replace_idat(cut_png, bytes(range(256)) * 4), "corrupt"),
        "huge-text.png": (encoded(noise(8), "PNG", pnginfo=text), "oversized_metadata"),
        "animated.gif": (frames("GIF"), "animated"),
        "animated.png": (frames("PNG"), "animated"),
        "animated.webp": (frames("WEBP"), "animated"),
        "pages.tif": (frames("TIFF"), "multi_page"),
        "deep.png": (encoded(Image.new("I;16", (8, 8)), "PNG"), "unsupported_mode"),
        "cmyk.jpg": (encoded(Image.new("CMYK", (8, 8)), "JPEG"), "unsupported_mode"),
    }


def build_corpus(root: Path, outside: Path) -> dict[str, Verdict]:
    """Write the corpus to ``root`` (and a few files to ``outside``, a folder beside it that
    links point into); return the verdict prepare must reach for every entry it is offered.

    Hidden folders and linked folders are one entry each: prepare does not enter them.
    """
    expected: dict[str, Verdict] = {}

    def put(rel: str, data: bytes, outcome: str, why: str) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[rel] = Verdict(outcome, why)
        return path

    def link(rel: str, target: str | Path, outcome: str, why: str) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / rel)
        expected[rel] = Verdict(outcome, why)

    synthesize(root, count=30, size=8, seed=21)  # three good images per class
    for path in root.rglob("*.png"):
        rel = path.relative_to(root).as_posix()
        expected[rel] = Verdict("prepared", rel.split("/")[0])

    # label conflicts: one image filed under 1 (twice) and 7; a plain duplicate under 2
    conflict = encoded(Image.fromarray(pattern(8, seed=1)), "PNG")
    for rel in ("1/a.png", "1/a-again.png", "7/a-copy.png"):
        put(rel, conflict, "quarantined", "label_conflict")
    twin = encoded(Image.fromarray(pattern(8, seed=2)), "PNG")
    put("2/original.png", twin, "prepared", "2")
    put("2/twin.png", twin, "quarantined", "duplicate")

    # not a class folder, or an unknown one
    put("loose.png", encoded(Image.fromarray(pattern(8, seed=3)), "PNG"), *QUARANTINED_AS_LOOSE)
    put("cat/good.png", encoded(Image.fromarray(pattern(8, seed=4)), "PNG"), *UNKNOWN_CLASS)

    # symlinks: inside the folder (followed), out of it, to a system file, dangling, loops
    inside = encoded(Image.fromarray(pattern(8, seed=5)), "PNG")
    put("originals/six.png", inside, *UNKNOWN_CLASS)  # "originals" is no class
    link("6/in-root.png", "../originals/six.png", "prepared", "6")
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.png").write_bytes(encoded(Image.fromarray(pattern(8, seed=6)), "PNG"))
    link("6/outside.png", outside / "secret.png", "skipped", "symlink_outside")
    link("6/system.png", SYSTEM_FILE, "skipped", "symlink_outside")
    link("6/outside-folder", outside, "skipped", "symlink_outside")
    link("6/folder-link", "../5", "skipped", "symlink_to_folder")
    link("6/dangling.png", "../nowhere.png", "skipped", "dangling_symlink")
    link("6/self-loop.png", "self-loop.png", "skipped", "symlink_loop")
    link("6/loop-a.png", "loop-b.png", "skipped", "symlink_loop")
    link("6/loop-b.png", "loop-a.png", "skipped", "symlink_loop")

    # not a file at all: opening a FIFO for reading waits for a writer forever
    os.mkfifo(root / "6" / "pipe.png")
    expected["6/pipe.png"] = Verdict("skipped", "not_a_regular_file")

    # hidden files and folders
    put("3/.DS_Store", b"finder", "skipped", "hidden")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(inside)
    expected[".cache"] = Verdict("skipped", "hidden")
    (root / "4" / ".thumbs").mkdir()
    (root / "4" / ".thumbs" / "x.png").write_bytes(twin)
    expected["4/.thumbs"] = Verdict("skipped", "hidden")

    # bad images, and one image in every format Pillow writes and opens here
    for name, (data, reason) in bad_images().items():
        put(f"3/{name}", data, "quarantined", reason)
    for fmt, (data, reason) in format_samples().items():
        verdict = ("quarantined", reason) if reason else ("prepared", "8")
        put(f"8/format-{fmt.lower()}", data, *verdict)
    return expected
