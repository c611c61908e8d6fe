"""Prepare: decode and check every image, split it, and write the arrays the model trains on.

Reads a dataset version (``data/images/<class>/*``), and writes to the lake under
``prepared/<dataset version>/``: ``data.npz`` (pixels scaled to [0, 1], labels, splits, content
hashes), ``metadata.csv`` (one row per image, what the data checks read) and, last, so that
its presence means the rest is whole, ``summary.json`` (the step's result).

- **Deterministic split by content hash**: an image's split depends on its bytes alone, so it
  never changes split when the dataset grows, and equal images always share a split.
- **Incremental**: decoded pixels are cached by content hash (and image size), with DVC's md5
  of each file, in shards under ``<home>/cache/prepare/`` (see ``ml_tasks.data.prepare_cache``); a
  re-run reads and decodes only images it has not seen.
- **The version asked for**: a dataset version is prepared from DVC's record of it (path ->
  md5, the ``.dir`` object in DVC's cache): a file seen before is known by its md5 and not
  opened; a new one is read from DVC's cache or the work tree, and only when its md5 is the
  recorded one. Whatever the work tree holds, what is prepared is the version; when a file
  cannot be read here, or DVC's record is not, the version is fetched through DVC.
- **A plain folder** (``--data-dir``): a file's hash is remembered with its size and mtime,
  like git's index, so a re-run costs one ``stat`` per file seen before.
- **Nothing is lost**: a file that cannot be used (empty, truncated, corrupt, not an image,
  animated, 16-bit, CMYK, too many pixels, outside a known class folder, a copy of another
  image, the same image under two labels) is copied to the lake, one record per path and
  version: ``quarantine/prepare/<version>/<path key>/`` holds the file and its ``reason.json``.
  An entry that is not an image file to read (hidden, a link out of the dataset folder or to
  nowhere, a FIFO...: see ``ml_tasks.data.scan``) is skipped with its reason, never opened.
  ``prepared + quarantined + skipped == offered`` always holds, and the result says so.
- **One label per image**: an image filed under two classes reaches training with neither:
  every copy is quarantined as ``label_conflict``, naming all of them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ml_tasks.core import events
from ml_tasks.core.lake import Lake, open_lake
from ml_tasks.core.settings import Settings, load_params, load_settings
from ml_tasks.core.step import StepError, add_result_option, run_step
from ml_tasks.core.workspace import writable_repo
from ml_tasks.data.dvc import VersionFiles, VersionNotLocal, local_version, tracked_version
from ml_tasks.data.files import read_regular_file
from ml_tasks.data.images import BadImage, content_hash, decode_image
from ml_tasks.data.prepare_cache import DecodeCache, FileIndex
from ml_tasks.data.scan import (
    Skipped,
    list_folder,
    list_images,
    list_version,
    scan_folder,
    scan_version,
)
from ml_tasks.data.versions import checkout_version, fetch_version

SPLITS = ("train", "val", "test")


@dataclass
class Quarantined:
    """A file kept out of training, and where its record is in the lake (``reason.json``)."""

    path: str
    content_hash: str
    reason: str
    detail: str
    record: str = ""


@dataclass
class Prepared:
    """What one run of prepare produced; also the step's JSON result."""

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

    def result(self, splits: list[str], classes: list[str]) -> dict[str, Any]:
        prepared, quarantined, skipped = len(self.hashes), len(self.quarantined), len(self.skipped)
        if prepared + quarantined != self.images_in or self.images_in + skipped != self.offered:
            raise StepError(
                f"accounting error: {prepared} prepared + {quarantined} quarantined + "
                f"{skipped} skipped != {self.offered} entries offered"
            )
        conflicts = {q.content_hash for q in self.quarantined if q.reason == "label_conflict"}
        return {
            "dataset_version": self.dataset_version,
            "prepared_uri": self.prepared_uri,
            "offered": self.offered,
            "images_in": self.images_in,
            "prepared": prepared,
            "quarantined": quarantined,
            "skipped": skipped,
            "accounted": True,
            "label_conflicts": len(conflicts),
            "decoded": self.decoded,
            "from_cache": self.cached,
            "classes": classes,
            "by_split": dict(Counter(splits)),
            "by_class": dict(sorted(Counter(self.labels).items())),
            "quarantined_by_reason": dict(
                sorted(Counter(q.reason for q in self.quarantined).items())
            ),
            "skipped_by_reason": dict(sorted(Counter(s.reason for s in self.skipped).items())),
            "quarantine": [q.__dict__ for q in self.quarantined],
            "skips": [s.__dict__ for s in self.skipped],
        }


def split_of(hash_hex: str, fractions: dict[str, float]) -> str:
    """The split an image belongs to, from its content hash alone (stable as data grows)."""
    point = int(hash_hex[:8], 16) / 0x1_0000_0000
    edge = 0.0
    for name in SPLITS:
        edge += float(fractions[name])
        if point < edge:
            return name
    return SPLITS[-1]


def splits_of(hashes: list[str], fractions: dict[str, float]) -> list[str]:
    """:func:`split_of` for many hashes at once (the same answers, a fraction of the time)."""
    if not hashes:
        return []
    lut = np.zeros(256, np.uint64)
    lut[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint64)
    lut[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint64)
    digits = lut[np.frombuffer(np.array(hashes, dtype="S8").tobytes(), np.uint8).reshape(-1, 8)]
    points = (digits << (4 * np.arange(7, -1, -1, dtype=np.uint64))).sum(axis=1) / 0x1_0000_0000
    edges = np.cumsum([float(fractions[name]) for name in SPLITS])
    which = np.minimum(np.searchsorted(edges, points, side="right"), len(SPLITS) - 1)
    names = np.array(SPLITS)
    return list(names[which].tolist())


def quarantine(lake: Lake, item: Quarantined, data: bytes, dataset_version: str) -> None:
    """Copy a rejected file and its reason into the lake, and note where in ``item.record``.

    One record per path and version: two files with the same bytes, or one file in two
    versions, each keep their own. Keyed by a hash of the path (any path is a valid key, and no
    path's record lands inside another's), so a re-run of the version replaces, never adds.
    """
    base = f"quarantine/prepare/{dataset_version}/{content_hash(item.path.encode())[:16]}"
    item.record = f"{base}/reason.json"
    lake.write_bytes(f"{base}/{Path(item.path).name}", data)
    lake.write_bytes(
        item.record,
        json.dumps(
            {
                **item.__dict__,
                "dataset_version": dataset_version,
                "step": "prepare",
                "at": datetime.now(UTC).isoformat(),
            },
            indent=2,
        ).encode(),
    )


def prepare_images(
    images: Path | VersionFiles,
    *,
    dataset_version: str,
    lake: Lake,
    cache_dir: Path,
    params: dict[str, Any],
    progress: bool = False,
) -> Prepared:
    """Decode, check and split every file of ``images``; quarantine what cannot be used.

    ``images`` is a folder, or a dataset version as DVC records it. An image seen before costs
    a re-run a few look-ups (and, in a folder, a ``stat``): no read, hash or decode; the pixels
    are gathered, and the outputs written, as whole arrays. A version whose files cannot all be
    read here raises :class:`VersionNotLocal` before anything is written to the lake.
    """
    size = int(params["image_size"])
    class_list = [str(c) for c in params["classes"]]
    classes = set(class_list)
    max_pixels = int(params.get("max_pixels", 4096 * 4096))
    cache = DecodeCache.at(cache_dir, size).load()
    out = Prepared(dataset_version, lake.url(f"prepared/{dataset_version}"))
    if isinstance(images, VersionFiles):
        listing = list_version(list(images.manifest))
    else:
        listing = list_folder(images)
    bar: Any = None
    if progress:
        from tqdm import tqdm

        total = sum(len(names) for _, names in listing.groups)
        bar = tqdm(total=total, desc="prepare", unit="img", leave=False, disable=None)

    def on_new_content(digest: str, md5: str, data: bytes, label: str | None) -> None:
        if bar is not None:
            bar.update()  # per file read: the slow part of a run moves the bar smoothly
        if label in classes and digest not in cache:
            out.decoded += 1
            try:
                cache.add(digest, md5, decode_image(data, size=size, max_pixels=max_pixels))
            except BadImage as exc:
                cache.add_bad(digest, md5, exc.reason, str(exc))

    on_group = None if bar is None else lambda files, read: bar.update(files - read)
    index: FileIndex | None = None  # a folder's; a version's files are known by md5 instead
    try:
        if isinstance(images, VersionFiles):
            scan = scan_version(images, listing.groups, cache.by_md5, on_new_content, on_group)
        else:
            index = FileIndex(cache_dir, images)
            scan = scan_folder(images, listing.groups, index.load(), on_new_content, on_group)
    except VersionNotLocal:
        cache.save()  # what was read and decoded stays valid: keep it for the next run
        raise
    finally:
        if bar is not None:
            bar.close()

    def read(rel: str) -> bytes:  # a file seen before may be gone by now (quarantine)
        if not isinstance(images, VersionFiles):
            return read_regular_file(f"{images}/{rel}")
        try:
            return images.read_or_raise(rel)
        except VersionNotLocal:
            cache.save()
            raise

    out.images_in = len(scan.rels)
    hashes, rels = scan.hashes, scan.rels

    problems: dict[int, tuple[str, str]] = {}
    kept: list[int] = []
    labels: list[str] = []
    first_of: dict[str, int] = {}  # content hash -> first row in a class folder with it
    copies: dict[str, list[int]] = {}  # content hash -> the later rows with it
    conflicting: set[int] = set()  # first rows of images under two labels
    rows = cache.rows
    for start, end, label in scan.groups:
        if label is None:
            problems.update(
                (i, ("no_class_folder", "the file is not directly inside a class folder"))
                for i in range(start, end)
            )
            continue
        if label not in classes:
            detail = f"class folder {label!r} is not one of {class_list}"
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
                    out.decoded += 1
                    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
                    try:
                        pixels = decode_image(data, size=size, max_pixels=max_pixels)
                        cache.add(digest, md5, pixels)
                    except BadImage as exc:
                        cache.add_bad(digest, md5, exc.reason, str(exc))
                if digest not in rows:
                    problems[i] = cache.bad[digest]
                    continue
            if first_of.setdefault(digest, i) != i:
                copies.setdefault(digest, []).append(i)
                continue
            kept.append(i)
        labels += [label] * (len(kept) - len(labels))
    if copies:
        conflicting = settle_copies(rels, first_of, copies, problems)
        if conflicting:  # the first copy of each was kept above: not any more
            pairs = [(i, lbl) for i, lbl in zip(kept, labels, strict=True) if i not in conflicting]
            kept, labels = [i for i, _ in pairs], [lbl for _, lbl in pairs]

    # first_of's rows are kept, once per content, but for conflicts: the kept images this run
    # decoded are the fresh ones among them
    fresh_kept = sum(1 for h in set(cache.fresh) if first_of.get(h, -1) not in (-1, *conflicting))
    out.cached = len(kept) - fresh_kept
    out.hashes = [hashes[i] for i in kept] if len(kept) < len(hashes) else list(hashes)
    out.paths = [rels[i] for i in kept] if len(kept) < len(rels) else list(rels)
    out.labels = labels
    out.pixels, out.stats = cache.gather(out.hashes)
    out.skipped = scan.skipped
    rejected: dict[int, bytes] = {}
    for i in sorted(problems):  # every read before any write
        try:
            rejected[i] = read(rels[i])
        except OSError as exc:  # gone, or replaced by something that is not a file, since
            reason, detail = problems[i]
            out.skipped.append(Skipped(rels[i], "unreadable", f"{reason}: {detail}; {exc}"))
    for i, data in rejected.items():
        item = Quarantined(rels[i], hashes[i], *problems[i])
        quarantine(lake, item, data, dataset_version)
        out.quarantined.append(item)
    out.images_in -= len(problems) - len(rejected)
    out.skipped = sorted(listing.skipped + out.skipped, key=lambda item: item.path)
    cache.save()
    if index is not None:
        index.save(scan.rels, scan.ids, scan.sizes, scan.mtimes)
    return out


def settle_copies(
    rels: list[str],
    first_of: dict[str, int],
    copies: dict[str, list[int]],
    problems: dict[int, tuple[str, str]],
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


def csv_field(value: str) -> str:
    """Quote a CSV field only when it needs it (paths may hold commas or quotes)."""
    if any(c in value for c in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def write_prepared(
    lake: Lake, prepared: Prepared, splits: list[str], classes: list[str]
) -> dict[str, Any]:
    """Write arrays and metadata, then ``summary.json`` (the result): last, so a version whose
    summary is there is whole. The accounting is checked before anything is written."""
    result = prepared.result(splits, classes)
    prefix = f"prepared/{prepared.dataset_version}"
    lake.delete(f"{prefix}/summary.json")  # a version prepared again is not whole until the end
    x = prepared.pixels.astype(np.float32)
    x /= np.float32(255.0)  # in place: the same values as ``/ 255.0``, one array fewer
    label_index = {c: i for i, c in enumerate(classes)}
    y = np.fromiter(map(label_index.__getitem__, prepared.labels), np.int64, len(prepared.labels))
    with lake.writer(f"{prefix}/data.npz") as fh:  # straight to the file: 3x faster
        np.savez(
            fh,
            x=x,
            y=y,
            split=np.array(splits),
            hash=np.array(prepared.hashes),
            classes=np.array(classes),
        )
    lake.write_bytes(f"{prefix}/metadata.csv", metadata_csv(prepared, splits).encode())
    lake.write_bytes(f"{prefix}/summary.json", json.dumps(result, indent=2).encode())
    return result


def metadata_csv(prepared: Prepared, splits: list[str]) -> str:
    """One row per prepared image: what the data checks read."""
    _, height, width = prepared.pixels.shape
    shape = f"{height},{width}"
    # Quoting is decided once for the whole column: checking each field costs more than the row.
    paths = prepared.paths
    if any(c in "".join(paths) for c in ',"\n'):
        paths = [csv_field(p) for p in paths]
    lines = ["content_hash,path,label,split,height,width,pixel_min,pixel_max,pixel_mean"]
    lines += [
        f"{h},{p},{lbl},{sp},{shape},{stats}"
        for h, p, lbl, sp, stats in zip(
            prepared.hashes, paths, prepared.labels, splits, prepared.stats, strict=True
        )
    ]
    return "\n".join(lines) + "\n"


def prepare(
    settings: Settings,
    *,
    dataset_version: str | None = None,
    data_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The whole step: resolve the dataset version, prepare it, write it to the lake."""
    params = load_params(settings.params_path)["prepare"]
    lake = open_lake(settings.lake_uri)
    classes = [str(c) for c in params["classes"]]

    def prepare_from(images: Path | VersionFiles) -> Prepared:
        return prepare_images(
            images,
            dataset_version=version,
            lake=lake,
            cache_dir=settings.home / "cache" / "prepare",
            params=params,
            progress=progress,
        )

    prepared: Prepared | None = None
    datasets = settings.home / "datasets"  # versions fetched through DVC, one folder each
    if data_dir is not None:
        if not data_dir.is_dir():
            raise StepError(f"--data-dir {data_dir} is not a folder")
        version = (
            dataset_version or "dir-" + content_hash("\n".join(list_images(data_dir)).encode())[:16]
        )
        prepared = prepare_from(data_dir)
    else:
        version = dataset_version or tracked_version(settings) or ""
        if not version:
            raise StepError(
                "no dataset version: run `python -m ml_tasks.dataset materialize` first"
            )
        # With DVC's record of the version on this machine, files seen before are known by md5
        # and not opened; new ones are read from DVC's cache or the work tree, checked by md5.
        # No `dvc status` (0.4 s for the digits) and no checkout, for any version held here.
        files = local_version(settings, version)
        if files is not None:
            try:
                prepared = prepare_from(files)
            except VersionNotLocal as exc:
                events.emit("dataset_not_local", dataset_version=version, detail=str(exc))
                prepared = prepare_from(fetch_version(settings, version, datasets))
        if prepared is None:
            prepared = prepare_from(checkout_version(settings, version, datasets))
    splits = splits_of(prepared.hashes, params["split"])
    result = write_prepared(lake, prepared, splits, classes)
    for item in prepared.quarantined:
        events.emit(
            "image_quarantined",
            dataset_version=version,
            path=item.path,
            reason=item.reason,
            detail=item.detail,
        )
    for reason, count in result["skipped_by_reason"].items():
        events.emit(
            "entries_skipped",
            level="warning",
            dataset_version=version,
            reason=reason,
            count=count,
            paths=[s.path for s in prepared.skipped if s.reason == reason][:20],
        )
    events.emit(
        "prepared",
        dataset_version=version,
        offered=result["offered"],
        images_in=result["images_in"],
        prepared=result["prepared"],
        quarantined=result["quarantined"],
        skipped=result["skipped"],
        label_conflicts=result["label_conflicts"],
        decoded=result["decoded"],
        from_cache=result["from_cache"],
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_tasks.prepare",
        description="Decode, check and split a dataset version into prepared/<version>/.",
        epilog="A version is prepared from DVC's record of it when this machine has it: files "
        "seen before are not opened, new ones are read from DVC's cache or the work tree when "
        "their md5 is the recorded one. Otherwise the version is fetched through DVC from the "
        "remote. Unusable files go to quarantine/prepare/ with a reason.",
    )
    parser.add_argument(
        "--dataset-version", help="DVC hash of data/images (default: the work tree's)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="prepare a plain folder of <class>/<image> instead"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_result_option(parser)
    args = parser.parse_args(argv)
    settings = load_settings()
    return run_step(
        "prepare",
        lambda: prepare(
            writable_repo(settings),  # a pod's /workspace is read-only: DVC writes in a clone
            dataset_version=args.dataset_version,
            data_dir=args.data_dir,
            progress=not args.no_progress,
        ),
        result_path=args.result_path,
        context={"dataset_version": args.dataset_version},
    )


if __name__ == "__main__":
    raise SystemExit(main())
