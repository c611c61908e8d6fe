"""Prepare: decode and check every image, split it, and write the arrays the model trains on.

Reads a dataset version (``data/images/<class>/*``), and writes to the lake under
``prepared/<dataset version>/``: ``data.npz`` (pixels scaled to [0, 1], labels, splits, content
hashes), ``metadata.csv`` (one row per image, what the data checks read) and ``summary.json``.

- **Deterministic split by content hash**: an image's split depends on its bytes alone, so it
  never changes split when the dataset grows, and equal images always share a split.
- **Incremental**: decoded pixels are cached by content hash (and image size), in shards under
  ``<home>/cache/prepare/``, and a file's hash is remembered with its size and mtime; a re-run
  reads and decodes only images it has not seen.
- **Nothing is lost**: a file that cannot be used (empty, truncated, not an image, animated,
  16-bit, CMYK, too many pixels, outside a known class folder, a copy of another image) is
  copied to ``quarantine/prepare/<hash>/`` in the lake with a ``reason.json``, and counted.
  ``prepared + quarantined == images_in`` always holds, and the result says so.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ml_tasks import events
from ml_tasks.config import Settings, load_params, load_settings
from ml_tasks.images import BadImage, content_hash, decode_image
from ml_tasks.lake import Lake, open_lake
from ml_tasks.step import StepError, add_result_option, run_step

CACHE_FORMAT = "v1"
SPLITS = ("train", "val", "test")


@dataclass
class Quarantined:
    path: str
    content_hash: str
    reason: str
    detail: str


@dataclass
class Prepared:
    """What one run of prepare produced; also the step's JSON result."""

    dataset_version: str
    prepared_uri: str
    images_in: int = 0
    decoded: int = 0
    cached: int = 0
    pixels: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint8))
    labels: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)

    def result(self, splits: list[str], classes: list[str]) -> dict[str, Any]:
        prepared = len(self.hashes)
        if prepared + len(self.quarantined) != self.images_in:
            raise StepError(
                f"accounting error: {prepared} prepared + {len(self.quarantined)} quarantined "
                f"!= {self.images_in} input images"
            )
        return {
            "dataset_version": self.dataset_version,
            "prepared_uri": self.prepared_uri,
            "images_in": self.images_in,
            "prepared": prepared,
            "quarantined": len(self.quarantined),
            "accounted": True,
            "decoded": self.decoded,
            "from_cache": self.cached,
            "classes": classes,
            "by_split": dict(Counter(splits)),
            "by_class": dict(sorted(Counter(self.labels).items())),
            "quarantine": [q.__dict__ for q in self.quarantined],
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


class DecodeCache:
    """Decoded pixels (and decode failures) by content hash, stored as append-only shards."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pixels: dict[str, np.ndarray] = {}
        self.bad: dict[str, tuple[str, str]] = {}
        self._new_pixels: dict[str, np.ndarray] = {}
        self._new_bad: dict[str, tuple[str, str]] = {}

    def load(self) -> DecodeCache:
        if self.folder.exists():
            for shard in sorted(self.folder.glob("*.npz")):
                with np.load(shard) as data:
                    self.pixels.update(zip(data["hashes"].tolist(), data["pixels"], strict=True))
            for shard in sorted(self.folder.glob("*.bad.json")):
                for h, (reason, detail) in json.loads(shard.read_text()).items():
                    self.bad[h] = (reason, detail)
        return self

    def load_hashes(self) -> dict[str, list[Any]]:
        """Content hashes of files seen before, by path, with the size and mtime they had.

        Like git's index: an unchanged file (same size and mtime) is not read again, so a
        re-run over a grown dataset costs a ``stat`` per old file, not a read and a hash.
        """
        path = self.folder.parent / "file-hashes.json"
        loaded: dict[str, list[Any]] = json.loads(path.read_text()) if path.exists() else {}
        return loaded

    def save_hashes(self, hashes: dict[str, list[Any]]) -> None:
        path = self.folder.parent / "file-hashes.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(hashes, separators=(",", ":")))
        tmp.replace(path)

    def add(self, hash_hex: str, pixels: np.ndarray) -> None:
        self.pixels[hash_hex] = self._new_pixels[hash_hex] = pixels

    def add_bad(self, hash_hex: str, reason: str, detail: str) -> None:
        self.bad[hash_hex] = self._new_bad[hash_hex] = (reason, detail)

    def save(self) -> None:
        """Write what this run decoded as one new shard (atomically)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        if self._new_pixels:
            buffer = io.BytesIO()
            np.savez(
                buffer,
                hashes=np.array(list(self._new_pixels)),
                pixels=np.stack(list(self._new_pixels.values())),
            )
            tmp = self.folder / f".{name}.tmp"
            tmp.write_bytes(buffer.getvalue())
            tmp.replace(self.folder / f"{name}.npz")
        if self._new_bad:
            tmp = self.folder / f".{name}.bad.tmp"
            tmp.write_text(json.dumps(self._new_bad))
            tmp.replace(self.folder / f"{name}.bad.json")
        self._new_pixels, self._new_bad = {}, {}


def list_images(folder: Path) -> list[tuple[str, str, str | None]]:
    """Every file under ``folder`` as (path, relative path, class folder or None), sorted.

    ``os.walk`` rather than ``Path.rglob``: on large datasets listing is a visible share of
    an incremental run, and plain strings are several times cheaper than Path objects.
    """
    found = []
    root = str(folder)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, root)
        depth = 0 if rel_dir == "." else rel_dir.count(os.sep) + 1
        for name in filenames:
            if name.startswith("."):
                continue
            rel = name if depth == 0 else f"{rel_dir}/{name}".replace(os.sep, "/")
            found.append((f"{dirpath}/{name}", rel, rel_dir if depth == 1 else None))
    found.sort(key=lambda item: item[1])
    return found


def quarantine(lake: Lake, item: Quarantined, data: bytes, dataset_version: str) -> None:
    """Copy a rejected file and its reason into the lake; keyed by content, so idempotent."""
    base = f"quarantine/prepare/{item.content_hash[:16]}"
    lake.write_bytes(f"{base}/{Path(item.path).name}", data)
    lake.write_bytes(
        f"{base}/reason.json",
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
    folder: Path,
    *,
    dataset_version: str,
    lake: Lake,
    cache_dir: Path,
    params: dict[str, Any],
    progress: bool = False,
) -> Prepared:
    """Decode, check and split every file in ``folder``; quarantine what cannot be used."""
    size = int(params["image_size"])
    classes = [str(c) for c in params["classes"]]
    max_pixels = int(params.get("max_pixels", 4096 * 4096))
    cache = DecodeCache(cache_dir / f"s{size}-{CACHE_FORMAT}").load()
    hashes = cache.load_hashes()  # path -> [size, mtime_ns, content hash]: skip re-reading
    out = Prepared(dataset_version, lake.url(f"prepared/{dataset_version}"))
    seen: dict[str, tuple[str, str]] = {}  # content hash -> (label, path) kept
    pixels: list[np.ndarray] = []
    files = list_images(folder)
    out.images_in = len(files)

    iterator: Any = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc="prepare", unit="img", leave=False, disable=None)
    for path, rel, label in iterator:
        stat = os.stat(path)
        known = hashes.get(path)
        data: bytes | None = None
        if known is not None and known[0] == stat.st_size and known[1] == stat.st_mtime_ns:
            digest = str(known[2])
        else:
            with open(path, "rb") as fh:
                data = fh.read()
            digest = content_hash(data)
            hashes[path] = [stat.st_size, stat.st_mtime_ns, digest]
        problem: tuple[str, str] | None = None
        if label is None:
            problem = ("no_class_folder", "the file is not directly inside a class folder")
        elif label not in classes:
            problem = ("unknown_class", f"class folder {label!r} is not one of {classes}")
        elif digest in seen:
            kept_label, kept_path = seen[digest]
            problem = (
                ("duplicate", f"same content as {kept_path}")
                if kept_label == label
                else ("conflicting_label", f"same content as {kept_path}, labelled {kept_label!r}")
            )
        elif digest in cache.bad:
            problem = cache.bad[digest]
        elif digest in cache.pixels:
            out.cached += 1
        else:
            out.decoded += 1
            data = data if data is not None else Path(path).read_bytes()
            try:
                cache.add(digest, decode_image(data, size=size, max_pixels=max_pixels))
            except BadImage as exc:
                cache.add_bad(digest, exc.reason, str(exc))
                problem = (exc.reason, str(exc))
        if problem is not None:
            item = Quarantined(rel, digest, *problem)
            quarantine(
                lake, item, data if data is not None else Path(path).read_bytes(), dataset_version
            )
            out.quarantined.append(item)
            continue
        assert label is not None
        seen[digest] = (label, rel)
        pixels.append(cache.pixels[digest])
        out.labels.append(label)
        out.hashes.append(digest)
        out.paths.append(rel)
    cache.save()
    cache.save_hashes(hashes)
    out.pixels = np.stack(pixels) if pixels else np.zeros((0, size, size), np.uint8)
    return out


def csv_field(value: str) -> str:
    """Quote a CSV field only when it needs it (paths may hold commas or quotes)."""
    if any(c in value for c in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def write_prepared(lake: Lake, prepared: Prepared, splits: list[str], classes: list[str]) -> None:
    """Write arrays, metadata and summary; ``_SUCCESS`` last, so readers never see half."""
    prefix = f"prepared/{prepared.dataset_version}"
    x = prepared.pixels.astype(np.float32) / 255.0
    label_index = {c: i for i, c in enumerate(classes)}
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x=x,
        y=np.array([label_index[lbl] for lbl in prepared.labels], dtype=np.int64),
        split=np.array(splits),
        hash=np.array(prepared.hashes),
        classes=np.array(classes),
    )
    lake.write_bytes(f"{prefix}/data.npz", buffer.getvalue())

    flat = x.reshape(len(x), -1)
    lows, highs, means = (
        flat.min(axis=1, initial=1.0),
        flat.max(axis=1, initial=0.0),
        flat.mean(axis=1),
    )
    height, width = x.shape[1], x.shape[2]
    # Quoting is decided once for the whole column: checking each field costs more than the row.
    paths = prepared.paths
    if any(c in "".join(paths) for c in ',"\n'):
        paths = [csv_field(p) for p in paths]
    lines = ["content_hash,path,label,split,height,width,pixel_min,pixel_max,pixel_mean"]
    lines += [
        f"{h},{p},{lbl},{sp},{height},{width},{lo:.6f},{hi:.6f},{mu:.6f}"
        for h, p, lbl, sp, lo, hi, mu in zip(
            prepared.hashes, paths, prepared.labels, splits, lows, highs, means, strict=True
        )
    ]
    text = "\n".join(lines) + "\n"
    lake.write_bytes(f"{prefix}/metadata.csv", text.encode())
    lake.write_bytes(f"{prefix}/_SUCCESS", b"")


def prepare(
    settings: Settings,
    *,
    dataset_version: str | None = None,
    data_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The whole step: resolve the dataset version, prepare it, write it to the lake."""
    from ml_tasks.dataset import checkout_version, tracked_version

    params = load_params(settings.params_path)["prepare"]
    if data_dir is not None:
        if not data_dir.is_dir():
            raise StepError(f"--data-dir {data_dir} is not a folder")
        folder = data_dir
        version = (
            dataset_version
            or "dir-"
            + content_hash("\n".join(rel for _, rel, _ in list_images(data_dir)).encode())[:16]
        )
    else:
        tracked = dataset_version or tracked_version(settings)
        if tracked is None:
            raise StepError(
                "no dataset version: run `python -m ml_tasks.dataset materialize` first"
            )
        version = tracked
        folder = checkout_version(settings, version, settings.home / "datasets")
    lake = open_lake(settings.lake_uri)
    classes = [str(c) for c in params["classes"]]
    prepared = prepare_images(
        folder,
        dataset_version=version,
        lake=lake,
        cache_dir=settings.home / "cache" / "prepare",
        params=params,
        progress=progress,
    )
    splits = [split_of(h, params["split"]) for h in prepared.hashes]
    write_prepared(lake, prepared, splits, classes)
    result = prepared.result(splits, classes)
    lake.write_bytes(f"prepared/{version}/summary.json", json.dumps(result, indent=2).encode())
    for item in prepared.quarantined:
        events.emit(
            "image_quarantined",
            dataset_version=version,
            path=item.path,
            reason=item.reason,
            detail=item.detail,
        )
    events.emit(
        "prepared",
        dataset_version=version,
        images_in=result["images_in"],
        prepared=result["prepared"],
        quarantined=result["quarantined"],
        decoded=result["decoded"],
        from_cache=result["from_cache"],
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_tasks.prepare",
        description="Decode, check and split a dataset version into prepared/<version>/.",
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
            settings,
            dataset_version=args.dataset_version,
            data_dir=args.data_dir,
            progress=not args.no_progress,
        ),
        result_path=args.result_path,
        context={"dataset_version": args.dataset_version},
    )


if __name__ == "__main__":
    raise SystemExit(main())
