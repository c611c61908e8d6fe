"""Prepare throughput (issue 2): against raw decoding, and incremental against full.

- throughput: images/s of a cold ``prepare`` over N synthetic PNGs divided by images/s of
  only reading and decoding the same files with Pillow. Target >= 0.5.
- incremental: time of ``prepare`` after adding 1% new images (warm cache) divided by the
  time of the cold full prepare. Target <= 0.1.

Both are ratios measured in one run on the same files, so machine noise mostly cancels. A
reference row shows the floor of any re-run that must notice a file rewritten in place: listing
the folder and one ``stat`` per file (no look-up, no output), against the same full prepare.
Measured at 8x8 (the digits: decoding is so cheap that a re-run's per-file bookkeeping, a
``stat`` and a dictionary look-up, weighs most) and at 32x32 (a more typical small image).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.table import Row, report, row

ENVIRONMENT = "steps"


def raw_decode(files: list[Path]) -> float:
    from PIL import Image

    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            image.load()
    return time.perf_counter() - start


def list_and_stat(folder: Path) -> float:
    """Seconds to list every file under ``folder`` and ``stat`` each: what a re-run cannot skip."""
    from ml_tasks.prepare import list_folder

    start = time.perf_counter()
    for rel_dir, names in list_folder(folder):
        fd = os.open(folder / rel_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in names:
                os.stat(name, dir_fd=fd)
        finally:
            os.close(fd)
    return time.perf_counter() - start


def run(count: int = 10_000, sizes: tuple[int, ...] = (8, 32)) -> list[Row]:
    rows: list[Row] = []
    for size in sizes:
        rows += measure(count, size)
    return rows


def measure(count: int, size: int) -> list[Row]:
    from ml_tasks.config import load_settings
    from ml_tasks.dataset import synthesize
    from ml_tasks.prepare import prepare

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        root = Path(tmp)
        os.environ["FLYWHEEL_HOME"] = str(root / "home")
        os.environ.pop("FLYWHEEL_LAKE_URI", None)
        folder = root / "images"
        synthesize(folder, count=count, size=size, seed=1)
        files = sorted(folder.rglob("*.png"))
        raw_decode(files[:200])  # warm imports and the page cache alike for both sides
        raw = raw_decode(files)
        gc.collect()  # each side starts without garbage left by the one before
        start = time.perf_counter()
        first = prepare(load_settings(), data_dir=folder, dataset_version="full")
        full = time.perf_counter() - start
        synthesize(root / "extra", count=count // 100, size=size, seed=2)
        for path in (root / "extra").rglob("*.png"):
            target = folder / path.parent.name / f"new-{path.name}"
            target.write_bytes(path.read_bytes())
        gc.collect()
        start = time.perf_counter()
        second = prepare(load_settings(), data_dir=folder, dataset_version="plus1pct")
        incremental = time.perf_counter() - start
        floor = min(list_and_stat(folder) for _ in range(3))
    assert first["prepared"] == count and second["decoded"] == count // 100
    prepare_rate, raw_rate = count / full, count / raw
    return [
        row(
            "prepare",
            f"{size}x{size}: img/s, {count} images, vs raw decode",
            prepare_rate,
            raw_rate,
            ">= 0.5",
            prepare_rate / raw_rate >= 0.5,
        ),
        row(
            "prepare",
            f"{size}x{size}: s for +1% ({count // 100} new) vs full",
            incremental,
            full,
            "<= 0.1",
            incremental / full <= 0.1,
        ),
        row(
            "prepare",
            f"{size}x{size}: s to list + stat the {count + count // 100} files (reference)",
            floor,
            full,
            "-",
            None,
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.prepare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--count", type=int, default=10_000, help="synthetic images (default 10000)"
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    return report(run(args.count), args.json)


if __name__ == "__main__":
    sys.exit(main())
