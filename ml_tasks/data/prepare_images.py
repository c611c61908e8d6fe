"""Decoding, checking and sorting every file of a dataset: what prepare keeps, and what not.

A file is kept when it decodes (:mod:`ml_tasks.data.images`), sits directly in a known class
folder and is the first of its content there. A copy of an image under the same label is a
``duplicate``; an image filed under two labels reaches training with neither: every copy is
quarantined as ``label_conflict``, naming all of them. Decoded pixels come from, and go to,
the :class:`~ml_tasks.data.prepare_cache.DecodeCache`, so an image seen before is not read,
hashed or decoded again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml_tasks.core.lake import Lake
from ml_tasks.data.dvc import VersionFiles, VersionNotLocal
from ml_tasks.data.files import read_regular_file
from ml_tasks.data.images import BadImage, decode_image
from ml_tasks.data.prepare_cache import DecodeCache, FileIndex
from ml_tasks.data.quarantine import Problems, Quarantined, quarantine_rows
from ml_tasks.data.scan import (
    Listing,
    Scan,
    Skipped,
    list_folder,
    list_version,
    scan_folder,
    scan_version,
)

Images = Path | VersionFiles  # a plain folder, or a dataset version as DVC records it


@dataclass
class Prepared:
    """What one run of prepare produced, before it is split and written."""

    dataset_version: str
    prepared_uri: str
    images_in: int = 0  # files read as images: prepared or quarantined
    decoded: int = 0
    cached: int = 0
    pixels: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint8))
    labels: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    stats: list[str] = field(default_factory=list)  # per image, see pixel_stats
    quarantined: list[Quarantined] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def offered(self) -> int:
        """Every entry of the dataset: the files read as images and the entries skipped."""
        return self.images_in + len(self.skipped)


@dataclass
class Sorting:
    """Rows of a scan sorted into kept (with their labels) and problems; ``first_of`` maps a
    content hash to its first row in a class folder, ``conflicting`` holds the first rows of
    images found under two labels."""

    kept: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    problems: Problems = field(default_factory=dict)
    first_of: dict[str, int] = field(default_factory=dict)
    conflicting: set[int] = field(default_factory=set)


class Decoder:
    """Decodes each new image once, at the size params ask for, into the cache; counts them."""

    def __init__(self, cache: DecodeCache, params: dict[str, Any], bar: Any = None) -> None:
        self.cache = cache
        self.size = int(params["image_size"])
        self.class_list = [str(c) for c in params["classes"]]
        self.classes = set(self.class_list)
        self.max_pixels = int(params.get("max_pixels", 4096 * 4096))
        self.bar = bar
        self.decoded = 0

    def on_new_content(self, digest: str, md5: str, data: bytes, label: str | None) -> None:
        """A file the scan read: decoded now when it is an image in a class folder."""
        if self.bar is not None:
            self.bar.update()  # per file read: the slow part of a run moves the bar smoothly
        if label in self.classes and digest not in self.cache:
            self.decode(digest, md5, data)

    def on_group(self, files: int, read: int) -> None:
        """A folder scanned: the files not read move the bar at once."""
        if self.bar is not None:
            self.bar.update(files - read)

    def decode(self, digest: str, md5: str, data: bytes) -> None:
        self.decoded += 1
        try:
            self.cache.add(
                digest, md5, decode_image(data, size=self.size, max_pixels=self.max_pixels)
            )
        except BadImage as exc:
            self.cache.add_bad(digest, md5, exc.reason, str(exc))


class Reader:
    """Reads one file of the dataset by relative path; a file seen before may be gone by now.

    A version's file that cannot be read here raises :class:`VersionNotLocal`, after saving
    what was decoded so far (still valid for the next run).
    """

    def __init__(self, images: Images, cache: DecodeCache) -> None:
        self.images = images
        self.cache = cache

    def __call__(self, rel: str) -> bytes:
        if not isinstance(self.images, VersionFiles):
            return read_regular_file(f"{self.images}/{rel}")
        try:
            return self.images.read_or_raise(rel)
        except VersionNotLocal:
            self.cache.save()
            raise


@contextmanager
def progress_bar(listing: Listing, progress: bool) -> Iterator[Any]:
    """A tqdm bar over every listed file, or None without progress."""
    if not progress:
        yield None
        return
    from tqdm import tqdm

    total = sum(len(names) for _, names in listing.groups)
    bar = tqdm(total=total, desc="prepare", unit="img", leave=False, disable=None)
    try:
        yield bar
    finally:
        bar.close()


def scan_images(
    images: Images, listing: Listing, decoder: Decoder, cache_dir: Path
) -> tuple[Scan, FileIndex | None]:
    """Hash every listed file, decoding the new ones; a folder's :class:`FileIndex` comes
    with it (a version's files are known by md5 instead)."""
    cache, seen = decoder.cache, decoder.on_new_content
    on_group = None if decoder.bar is None else decoder.on_group
    try:
        if isinstance(images, VersionFiles):
            return scan_version(images, listing.groups, cache.by_md5, seen, on_group), None
        index = FileIndex(cache_dir, images)
        return scan_folder(images, listing.groups, index.load(), seen, on_group), index
    except VersionNotLocal:
        cache.save()  # what was read and decoded stays valid: keep it for the next run
        raise


def sort_rows(scan: Scan, decoder: Decoder, read: Reader) -> Sorting:
    """Keep each image in a known class folder that decodes, once per content; every other row
    gets its problem. An image hashed in an earlier run but never decoded is decoded now."""
    out = Sorting()
    cache, hashes, rels, rows = decoder.cache, scan.hashes, scan.rels, decoder.cache.rows
    kept, labels, problems, first_of = out.kept, out.labels, out.problems, out.first_of
    copies: dict[str, list[int]] = {}  # content hash -> the later rows with it
    for start, end, label in scan.groups:
        if label is None:
            problems.update(
                (i, ("no_class_folder", "the file is not directly inside a class folder"))
                for i in range(start, end)
            )
            continue
        if label not in decoder.classes:
            detail = f"class folder {label!r} is not one of {decoder.class_list}"
            problems.update((i, ("unknown_class", detail)) for i in range(start, end))
            continue
        group = set(hashes[start:end])
        if len(group) == end - start and rows.keys() >= group and group.isdisjoint(first_of):
            # The usual folder: every image decoded before, none a copy of another (set
            # operations instead of the loop below; the same outcome).
            first_of.update(zip(hashes[start:end], range(start, end), strict=True))
            kept += range(start, end)
            labels += [label] * (end - start)
            continue
        for i in range(start, end):
            digest = hashes[i]
            if digest not in rows:  # not decoded at this image size, or not decodable
                if digest not in cache.bad:  # hashed in an earlier run, never decoded: now
                    try:
                        data = read(rels[i])
                    except OSError as exc:  # gone since the scan: skipped at quarantine
                        problems[i] = ("unreadable", str(exc))
                        continue
                    decoder.decode(
                        digest, hashlib.md5(data, usedforsecurity=False).hexdigest(), data
                    )
                if digest not in rows:
                    problems[i] = cache.bad[digest]
                    continue
            if first_of.setdefault(digest, i) != i:
                copies.setdefault(digest, []).append(i)
                continue
            kept.append(i)
        labels += [label] * (len(kept) - len(labels))
    if copies:
        out.conflicting = settle_copies(rels, first_of, copies, problems)
        if out.conflicting:  # the first copy of each was kept above: not any more
            pairs = [
                (i, lb) for i, lb in zip(kept, labels, strict=True) if i not in out.conflicting
            ]
            out.kept, out.labels = [i for i, _ in pairs], [lb for _, lb in pairs]
    return out


def settle_copies(
    rels: list[str],
    first_of: dict[str, int],
    copies: dict[str, list[int]],
    problems: Problems,
) -> set[int]:
    """Decide about images found more than once in class folders; returns the first rows of
    those under two labels, which were kept but must not be.

    Under one label, the first copy is kept and the others are duplicates. Under two or more,
    no label can be trusted: every copy is quarantined as ``label_conflict``, naming them all.
    """
    conflicting: set[int] = set()
    for digest, later in copies.items():
        first = first_of[digest]
        where = [first, *later]
        named = {rels[i]: rels[i].split("/", 1)[0] for i in where}
        if len(set(named.values())) == 1:
            problems.update((i, ("duplicate", f"same content as {rels[first]}")) for i in later)
            continue
        detail = "the same image under labels " + ", ".join(
            f"{label!r} ({path})" for path, label in named.items()
        )
        problems.update((i, ("label_conflict", detail)) for i in where)
        conflicting.add(first)
    return conflicting


def prepare_images(
    images: Images,
    *,
    dataset_version: str,
    lake: Lake,
    cache_dir: Path,
    params: dict[str, Any],
    progress: bool = False,
) -> Prepared:
    """Decode, check and sort every file of ``images``; quarantine what cannot be used.

    ``images`` is a folder, or a dataset version as DVC records it. An image seen before costs
    a re-run a few look-ups (and, in a folder, a ``stat``): no read, hash or decode; the pixels
    are gathered, and the outputs written, as whole arrays. A version whose files cannot all be
    read here raises :class:`VersionNotLocal` before anything is written to the lake.
    """
    cache = DecodeCache.at(cache_dir, int(params["image_size"])).load()
    out = Prepared(dataset_version, lake.url(f"prepared/{dataset_version}"))
    if isinstance(images, VersionFiles):
        listing = list_version(list(images.manifest))
    else:
        listing = list_folder(images)
    with progress_bar(listing, progress) as bar:
        decoder = Decoder(cache, params, bar)
        scan, index = scan_images(images, listing, decoder, cache_dir)
    read = Reader(images, cache)
    hashes, rels = scan.hashes, scan.rels
    sorting = sort_rows(scan, decoder, read)
    kept, first_of, conflicting = sorting.kept, sorting.first_of, sorting.conflicting

    # first_of's rows are kept, once per content, but for conflicts: the kept images this run
    # decoded are the fresh ones among them
    fresh_kept = sum(1 for h in set(cache.fresh) if first_of.get(h, -1) not in (-1, *conflicting))
    out.decoded = decoder.decoded
    out.cached = len(kept) - fresh_kept
    out.hashes = [hashes[i] for i in kept] if len(kept) < len(hashes) else list(hashes)
    out.paths = [rels[i] for i in kept] if len(kept) < len(rels) else list(rels)
    out.labels = sorting.labels
    out.pixels, out.stats = cache.gather(out.hashes)
    problems = sorting.problems
    out.quarantined, unreadable = quarantine_rows(
        lake, problems, rels, hashes, read, dataset_version
    )
    out.images_in = len(rels) - len(unreadable)
    out.skipped = sorted(listing.skipped + scan.skipped + unreadable, key=lambda item: item.path)
    cache.save()
    if index is not None:
        index.save(scan.rels, scan.ids, scan.sizes, scan.mtimes)
    return out
