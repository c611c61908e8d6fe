"""The caches that make prepare incremental, under ``<home>/cache/prepare/``.

- :class:`DecodeCache`: each decoded image by content hash (sha256), with DVC's md5 of its file
  and its metadata statistics; decode failures with their reason. Shards, one per run.
- :class:`FileIndex`: for a plain folder, each file's ids at a given size and mtime.

Caches are files written whole or not at all, read back as whole arrays and text blobs: a
re-run over 10,000 images spends milliseconds here, not a Python loop per image.
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from pathlib import Path

import numpy as np

from ml_tasks.core.lake import LocalLake
from ml_tasks.data.images import content_hash

CACHE_FORMAT = "v3"  # v2: md5s and pixel statistics kept; v3: EXIF orientation applied, new reasons
IDS = 64 + 32  # a file's ids: sha256 and md5, in hex


def write_atomic(path: Path, data: bytes) -> None:
    """Write a cache file the way the local lake writes objects: whole, or not at all."""
    LocalLake(path.parent).write_bytes(path.name, data)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def text_array(strings: list[str]) -> np.ndarray:
    """Strings (without newlines) as one array of UTF-8 bytes, one per line: read back with one
    ``split``, faster than a numpy string array's ``tolist`` (caches are read on every run)."""
    return np.frombuffer("\n".join(strings).encode(), np.uint8)


def text_list(array: np.ndarray) -> list[str]:
    """The strings of :func:`text_array`."""
    return array.tobytes().decode().split("\n") if array.size else []


class DecodeCache:
    """Decoded pixels (and decode failures) by content hash, stored as append-only shards.

    Held as one array plus a hash -> row map, not a dict of small arrays: a re-run gathers its
    thousands of cached images with one fancy index instead of a Python loop. With each image
    are kept DVC's md5 of its file (``by_md5``: a dataset version, which DVC records by md5, is
    prepared without opening a file seen before) and its metadata statistics
    (:func:`pixel_stats`: formatted once, not on every run). One shard per run that decoded
    something; when more than ``MAX_SHARDS`` have piled up, they are merged.
    """

    MAX_SHARDS = 16

    def __init__(self, folder: Path, size: int) -> None:
        self.folder = folder
        self.size = size
        self.rows: dict[str, int] = {}  # content hash -> row of the pixel array
        self.bad: dict[str, tuple[str, str]] = {}  # content hash -> (reason, detail)
        self.by_md5: dict[str, str] = {}  # DVC's md5 -> content hash, of rows and bad files
        self._blocks: list[np.ndarray] = []  # (n, size, size) uint8 arrays, in row order
        self._md5s: list[str] = []  # per row
        self._stats: list[str] = []  # per row ("" for a new image until gathered)
        self._unstated: list[int] = []  # rows of new images, statistics not computed yet
        self.fresh: list[str] = []  # decoded by this run, not saved yet
        self._fresh_bad: dict[str, tuple[str, str, str]] = {}
        self._shards: list[Path] = []

    @classmethod
    def at(cls, cache_dir: Path, size: int) -> DecodeCache:
        """The cache of images decoded to ``size`` x ``size``: a folder per size and format."""
        return cls(cache_dir / f"s{size}-{CACHE_FORMAT}", size)

    def load(self) -> DecodeCache:
        if self.folder.exists():
            for shard in sorted(self.folder.glob("*.npz")):
                try:
                    with np.load(shard) as data:
                        hashes, md5s = text_list(data["hashes"]), text_list(data["md5s"])
                        self._append(hashes, md5s, data["pixels"], text_list(data["stats"]))
                except FileNotFoundError:  # merged away by a concurrent run: a cache miss
                    continue
                self._shards.append(shard)
            for shard in sorted(self.folder.glob("*.bad.json")):
                try:
                    loaded = json.loads(shard.read_text())
                except FileNotFoundError:
                    continue
                for h, (reason, detail, md5) in loaded.items():
                    self.bad[h] = (reason, detail)
                    self.by_md5[md5] = h
        return self

    def _append(
        self, hashes: list[str], md5s: list[str], pixels: np.ndarray, stats: list[str]
    ) -> None:
        count = len(self._stats)
        self.rows.update(zip(hashes, range(count, count + len(hashes)), strict=True))
        self.by_md5.update(zip(md5s, hashes, strict=True))
        self._blocks.append(pixels)
        self._md5s += md5s
        self._stats += stats

    def __contains__(self, hash_hex: str) -> bool:
        return hash_hex in self.rows or hash_hex in self.bad

    def add(self, hash_hex: str, md5: str, pixels: np.ndarray) -> None:
        self._unstated.append(len(self._stats))
        self._append([hash_hex], [md5], pixels[None], [""])
        self.fresh.append(hash_hex)

    def add_bad(self, hash_hex: str, md5: str, reason: str, detail: str) -> None:
        self.bad[hash_hex] = (reason, detail)
        self.by_md5[md5] = hash_hex
        self._fresh_bad[hash_hex] = (reason, detail, md5)

    def gather(self, hashes: list[str]) -> tuple[np.ndarray, list[str]]:
        """The pixels of ``hashes`` (each decoded before), as one ``(n, size, size)`` array,
        and their statistics (computed here, in one batch, for images new to the cache)."""
        if not hashes:
            return np.zeros((0, self.size, self.size), np.uint8), []
        if len(self._blocks) > 1:
            self._blocks = [np.concatenate(self._blocks)]
        block, stats = self._blocks[0], self._stats
        if self._unstated:
            for row, text in zip(self._unstated, pixel_stats(block[self._unstated]), strict=True):
                stats[row] = text
            self._unstated = []
        rows = list(map(self.rows.__getitem__, hashes))
        return block[rows], list(map(stats.__getitem__, rows))

    def save(self) -> None:
        """Write what this run decoded as one new shard; merge the shards when there are many."""
        name = uuid.uuid4().hex
        if self.fresh:
            self._write(self.folder / f"{name}.npz", self.fresh)
        if self._fresh_bad:
            write_atomic(self.folder / f"{name}.bad.json", json.dumps(self._fresh_bad).encode())
        self.fresh, self._fresh_bad = [], {}
        if len(self._shards) > self.MAX_SHARDS:
            self.compact()

    def compact(self) -> None:
        """One shard with every cached image instead of many; written before the old go."""
        old, self._shards = self._shards, []
        self._write(self.folder / f"{uuid.uuid4().hex}.npz", list(self.rows))
        for shard in old:
            shard.unlink(missing_ok=True)

    def _write(self, shard: Path, hashes: list[str]) -> None:
        pixels, stats = self.gather(hashes)
        md5s = [self._md5s[self.rows[h]] for h in hashes]
        write_atomic(
            shard,
            npz_bytes(
                hashes=text_array(hashes),
                md5s=text_array(md5s),
                pixels=pixels,
                stats=text_array(stats),
            ),
        )
        self._shards.append(shard)


def pixel_stats(pixels: np.ndarray) -> list[str]:
    """Each image's ``pixel_min,pixel_max,pixel_mean`` (on the [0, 1] scale) as CSV fields.

    From the 8-bit pixels: a minimum or maximum is one of 256 values (formatted once), and the
    mean is exact (an integer sum), at a quarter of the memory traffic of the float array.
    """
    count = len(pixels)
    flat = pixels.reshape(count, -1)
    levels = [f"{k / 255:.6f}" for k in range(256)]
    lows = flat.min(axis=1, initial=255).tolist()
    highs = flat.max(axis=1, initial=0).tolist()
    means = (flat.sum(axis=1, dtype=np.int64) / max(1, flat.shape[1] * 255)).tolist()
    return [
        f"{levels[lo]},{levels[hi]},{mu:.6f}" for lo, hi, mu in zip(lows, highs, means, strict=True)
    ]


class FileIndex:
    """The content hash each file had at a given size and mtime, per dataset folder.

    Like git's index: a file whose size and mtime are unchanged is not read again, so a re-run
    over a grown dataset costs one ``stat`` per old file, not a read and a hash. One small
    ``.npz`` per folder, rewritten with the folder's current files after every run.
    """

    def __init__(self, cache_dir: Path, folder: Path) -> None:
        key = content_hash(str(folder.resolve()).encode())[:16]
        self.path = cache_dir / "file-index" / f"{key}.npz"

    def load(self) -> dict[tuple[str, int, int], str]:
        """(relative path, size, mtime in ns) -> the file's ids: its sha256 then md5, in hex."""
        try:
            with np.load(self.path) as data:
                rels = text_list(data["rels"])
                joined = data["ids"].tobytes().decode()
                sizes, mtimes = data["sizes"].tolist(), data["mtimes"].tolist()
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            return {}  # no index yet, or an unreadable one: hash every file again
        if not len(sizes) == len(mtimes) == len(rels) or len(joined) != IDS * len(rels):
            return {}
        ids = [joined[i : i + IDS] for i in range(0, len(joined), IDS)]
        return dict(zip(zip(rels, sizes, mtimes, strict=True), ids, strict=True))

    def save(self, rels: list[str], ids: list[str], sizes: list[int], mtimes: list[int]) -> None:
        """Paths and ids as one text blob each: a few ms for 100k files, not 100 ms."""
        if not rels:
            self.path.unlink(missing_ok=True)
            return
        write_atomic(
            self.path,
            npz_bytes(
                rels=text_array(rels),
                ids=np.frombuffer("".join(ids).encode(), np.uint8),
                sizes=np.array(sizes, dtype=np.int64),
                mtimes=np.array(mtimes, dtype=np.int64),
            ),
        )
