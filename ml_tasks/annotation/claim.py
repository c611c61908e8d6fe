"""Claim: move up to a batch of waiting images out of ``incoming/`` into ``annotation/<batch>/``.

An image waits when its sidecar exists (the model service writes the sidecar after the image).
Claiming must never lose an image, never claim one twice, and survive a crash at any point:

1. **Ledger.** A run reserves its images with one object, ``annotation/.claims/ledger/<n>.json``
   (the batch and its image keys), created *conditionally* (S3 ``If-None-Match: *``; a hard
   link, which fails on an existing name, on a local lake) at the next free number ``n``.
   Before choosing, it reads every open entry (one without ``<n>.done``) and leaves their
   images alone; losing the race for ``n`` means another run just reserved: read again,
   choose again. Entries are numbered without gaps, so the winner of ``n`` has seen every
   entry before it: two runs never hold the same image, and there is no lock for a crashed run
   to hold forever. An open entry naming this batch is ours (a retry after a crash): its
   images are resumed. One object per batch, not one per image: a thousand images cost one
   conditional write instead of a thousand.
2. **Manifest.** ``annotation/<batch>/manifest.json`` lists what the batch reserved, *before*
   anything moves, so a retried run resumes the same images.
3. **Copy, verify, delete.** Image and sidecar are copied, the copy verified (S3: the copy's
   ETag, the MD5 of a single-part object, equals the listed source's; local: SHA-256 of both
   files), and only then are the sources deleted (sidecars first, so a half-deleted pair is
   never seen as waiting). The manifest is then marked ``claimed`` and the ledger entry closed
   (``<n>.done``).

On a retry, an image whose copy exists and whose source is gone was already moved; one whose
source and copy are both gone was taken and finished by another run before we listed it: it is
dropped from this batch. An entry left open by a run that is never retried keeps its images out
of later claims: rerun that run, or delete its entry to release them. Closed entries older than
the newest are pruned after each claim, so the ledger stays short.

``python -m ml_tasks.annotation.claim --batch B --max-images N``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ml_tasks.annotation.batches import (
    CLAIMS,
    IMAGE_SUFFIX,
    INCOMING,
    add_batch_options,
    batch_from_args,
    batch_key,
    read_json_if_exists,
    sidecar_of,
    write_json,
)
from ml_tasks.core import events
from ml_tasks.core.lake import Lake, LakeError, LocalLake, S3Lake, open_lake, s3_objects
from ml_tasks.core.settings import load_settings
from ml_tasks.core.step import StepError, add_result_option, run_step

WORKERS = 10  # botocore's default connection pool size
LEDGER = CLAIMS + "ledger/"
ENTRY, DONE = ".json", ".done"
RESERVE_ATTEMPTS = 50
T = TypeVar("T")
R = TypeVar("R")


def parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """Small object-store calls are latency-bound: run them concurrently, in order."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(fn, items))


@dataclass(frozen=True)
class Listed:
    size: int
    etag: str | None  # MD5 of a single-part S3 object; None on a local lake


class ClaimStore:
    """The few storage operations claiming needs beyond :class:`Lake`, per lake kind."""

    def __init__(self, lake: Lake) -> None:
        if not isinstance(lake, LocalLake | S3Lake):
            raise StepError(f"cannot claim from a lake of type {type(lake).__name__}")
        self.lake = lake

    def _s3_key(self, key: str) -> str:
        assert isinstance(self.lake, S3Lake)
        return f"{self.lake.prefix}/{key}" if self.lake.prefix else key

    def listing(self, prefix: str) -> dict[str, Listed]:
        lake = self.lake
        if isinstance(lake, LocalLake):
            found_local: dict[str, Listed] = {}
            for key in lake.list(prefix):
                try:
                    found_local[key] = Listed(lake.size(key), None)
                except FileNotFoundError:  # moved by another run between listing and stat
                    continue
            return found_local
        strip = len(lake.prefix) + 1 if lake.prefix else 0
        found: dict[str, Listed] = {}
        for obj in s3_objects(lake.client, lake.bucket, self._s3_key(prefix)):
            found[obj["Key"][strip:]] = Listed(int(obj["Size"]), str(obj["ETag"]).strip('"'))
        return found

    def create_once(self, key: str, body: bytes) -> bool:
        """Create ``key`` with ``body`` only if absent; True when this call created it.

        Readers see the whole body or no object: S3 puts are atomic; locally the body is
        written to a temporary file first and hard-linked into place (``link`` fails when the
        name exists, like ``O_EXCL``, but never shows an empty file).
        """
        lake = self.lake
        if isinstance(lake, LocalLake):
            path = lake._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(body)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                tmp.unlink()
            return True
        from botocore.exceptions import ClientError

        try:
            lake.client.put_object(
                Bucket=lake.bucket, Key=self._s3_key(key), Body=body, IfNoneMatch="*"
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise
        return True

    def copy_verified(self, src: str, dst: str, source: Listed) -> None:
        """Copy ``src`` to ``dst`` and prove the copy equals the source, or raise."""
        lake = self.lake
        if isinstance(lake, LocalLake):
            lake.copy(src, dst)
            if _sha256(lake._path(src)) != _sha256(lake._path(dst)):
                raise LakeError(f"copy of {src} to {dst} differs from its source")
            return
        done = lake.client.copy_object(
            Bucket=lake.bucket,
            Key=self._s3_key(dst),
            CopySource={"Bucket": lake.bucket, "Key": self._s3_key(src)},
        )
        # The copy's ETag is the MD5 of what was written (single-part objects, which the
        # model service's small PUTs are): equal to the listed source's, the bytes are equal.
        etag = str(done["CopyObjectResult"]["ETag"]).strip('"')
        if etag != source.etag:
            raise LakeError(f"copy of {src} to {dst} differs from its source (ETag)")

    def delete_many(self, keys: list[str]) -> None:
        lake = self.lake
        if isinstance(lake, LocalLake):
            for key in keys:
                lake.delete(key)
            return
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            done = lake.client.delete_objects(
                Bucket=lake.bucket,
                Delete={"Objects": [{"Key": self._s3_key(k)} for k in chunk], "Quiet": True},
            )
            if done.get("Errors"):
                raise LakeError(
                    f"could not delete {len(done['Errors'])} objects: {done['Errors'][:3]}"
                )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def waiting_images(listing: dict[str, Listed]) -> list[str]:
    """Images under ``incoming/`` whose sidecar exists, oldest date folder first."""
    return sorted(
        key
        for key in listing
        if key.startswith(INCOMING) and key.endswith(IMAGE_SUFFIX) and sidecar_of(key) in listing
    )


def claim_batch(lake: Lake, batch: str, max_images: int) -> dict[str, Any]:
    """Claim up to ``max_images`` waiting images into ``annotation/<batch>/``; idempotent."""
    if max_images < 1:
        raise StepError("--max-images must be at least 1")
    store = ClaimStore(lake)
    manifest_key = batch_key(batch, "manifest.json")
    manifest = read_json_if_exists(lake, manifest_key)
    resumed = manifest is not None
    if manifest is None:
        reserved = reserve(store, batch, max_images)
        resumed = reserved.adopted
        listing = reserved.listing
        manifest = {
            "batch": batch,
            "state": "claiming",
            "created_at": datetime.now(UTC).isoformat(),
            "ledger": reserved.entry,
            "images": reserved.images,
        }
        write_json(lake, manifest_key, manifest)
    else:
        listing = store.listing(INCOMING)
    if manifest["state"] != "claimed":
        manifest = move_images(store, batch, manifest, listing)
        write_json(lake, manifest_key, manifest)
    # The entry closes last: while it is open no other run can take these images.
    pruned = 0
    if manifest.get("ledger") is not None:
        lake.write_bytes(ledger_key(int(manifest["ledger"]), DONE), b"")
        try:
            pruned = prune_ledger(store)
        except Exception as exc:  # housekeeping only: the claim itself is complete
            events.emit("ledger_not_pruned", level="warning", batch=batch, error=str(exc))
    images = manifest["images"]
    events.emit(
        "images_claimed",
        batch=batch,
        images=len(images),
        resumed=resumed,
        dropped=len(manifest.get("dropped", [])),
        ledger_entry=manifest.get("ledger"),
        ledger_pruned=pruned,
    )
    return {
        "batch": batch,
        "images": len(images),
        "dropped": len(manifest.get("dropped", [])),
        "resumed": resumed,
        "manifest": lake.url(manifest_key),
    }


def ledger_key(entry: int, suffix: str = ENTRY) -> str:
    return f"{LEDGER}{entry:010d}{suffix}"


def ledger_number(key: str, suffix: str) -> int | None:
    """The entry number of a ledger key with ``suffix``; None for anything else there."""
    stem = key[len(LEDGER) :].removesuffix(suffix)
    return int(stem) if key.endswith(suffix) and stem.isdigit() else None


def prune_ledger(store: ClaimStore) -> int:
    """Delete the closed entries older than the newest one; returns how many went.

    Keeps the ledger a few objects long however many batches ran, so reserving stays one short
    listing. The newest entry stays even when closed (it carries the next number), and open
    entries stay (they hold their images). A closed entry's images already left ``incoming/``,
    so a run that finds one gone while reading loses nothing. Entries go before their ``.done``
    marks: a crash in between leaves a mark, pruned next time, never a reopened entry.
    """
    keys = store.listing(LEDGER)
    entries = {n for n in (ledger_number(k, ENTRY) for k in keys) if n is not None}
    if not entries:
        return 0
    newest = max(entries)
    closed = [n for n in (ledger_number(k, DONE) for k in keys) if n is not None and n < newest]
    store.delete_many([ledger_key(n) for n in closed if n in entries])
    store.delete_many([ledger_key(n, DONE) for n in closed])
    return sum(1 for n in closed if n in entries)


@dataclass(frozen=True)
class Reservation:
    entry: int | None  # the ledger entry; None when nothing was waiting
    images: list[str]
    listing: dict[str, Listed]  # incoming/, listed after the ledger was read
    adopted: bool  # the entry was written by an earlier attempt of this batch


def reserve(store: ClaimStore, batch: str, limit: int) -> Reservation:
    """Reserve up to ``limit`` waiting images for ``batch`` in the claim ledger."""
    for _ in range(RESERVE_ATTEMPTS):
        keys = store.listing(LEDGER)
        entries = sorted(n for n in (ledger_number(k, ENTRY) for k in keys) if n is not None)
        closed = {n for n in (ledger_number(k, DONE) for k in keys) if n is not None}
        still_open = [e for e in entries if e not in closed]
        held: set[str] = set()
        for entry, content in zip(
            still_open,
            parallel(lambda e: read_json_if_exists(store.lake, ledger_key(e)), still_open),
            strict=True,
        ):
            if content is None:  # closed and pruned since the listing: its images are gone
                continue
            if content["batch"] == batch:  # reserved by an attempt of ours that then crashed
                return Reservation(entry, list(content["images"]), store.listing(INCOMING), True)
            held.update(content["images"])
        # Listed after reading the ledger: an image of a closed entry is already gone.
        listing = store.listing(INCOMING)
        chosen = [k for k in waiting_images(listing) if k not in held][:limit]
        if not chosen:
            return Reservation(None, [], listing, False)
        entry = entries[-1] + 1 if entries else 1
        body = {"batch": batch, "images": chosen, "at": datetime.now(UTC).isoformat()}
        if store.create_once(ledger_key(entry), json.dumps(body).encode()):
            return Reservation(entry, chosen, listing, False)
        # Another run took number ``entry`` first: read what it reserved and choose again.
    raise StepError(
        f"could not reserve images after {RESERVE_ATTEMPTS} attempts: "
        "too many runs are claiming at once"
    )


def move_images(
    store: ClaimStore, batch: str, manifest: dict[str, Any], listing: dict[str, Listed]
) -> dict[str, Any]:
    """Copy, verify, then delete each claimed image and sidecar; returns the final manifest."""
    sources: list[str] = [
        item if isinstance(item, str) else item["source"] for item in manifest["images"]
    ]
    already = store.listing(batch_key(batch))

    def move(source: str) -> dict[str, Any] | None:
        name = source.rsplit("/", 1)[-1]
        pairs = [
            (source, batch_key(batch, name)),
            (sidecar_of(source), batch_key(batch, sidecar_of(name))),
        ]
        for src, dst in pairs:
            if src in listing:
                try:
                    store.copy_verified(src, dst, listing[src])
                except Exception:
                    # Gone since we listed it: another run finished with it first (a resumed
                    # batch's listing is new, its entry old). Gone means theirs, not lost.
                    if store.lake.exists(src):
                        raise
                    return None
            elif dst not in already:
                return None  # taken and finished by another run before our listing
        return {"source": source, "image": pairs[0][1], "sidecar": pairs[1][1], "name": name}

    moved = parallel(move, sources)
    kept = [m for m in moved if m is not None]
    dropped = [s for s, m in zip(sources, moved, strict=True) if m is None]
    # Sidecars first: an image without its sidecar is not "waiting", so never re-claimed.
    store.delete_many([sidecar_of(m["source"]) for m in kept if sidecar_of(m["source"]) in listing])
    store.delete_many([m["source"] for m in kept if m["source"] in listing])
    return {
        **manifest,
        "state": "claimed",
        "images": kept,
        "dropped": dropped,
        "claimed_at": datetime.now(UTC).isoformat(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_tasks.annotation.claim",
        description="Claim up to a batch of waiting images from incoming/ (copy, verify, delete).",
    )
    add_batch_options(parser)
    parser.add_argument("--max-images", type=int, required=True, help="claim at most this many")
    add_result_option(parser)
    args = parser.parse_args(argv)
    if args.max_images < 1:
        parser.error("--max-images must be at least 1")
    batch = batch_from_args(args)
    settings = load_settings()
    return run_step(
        "claim",
        lambda: claim_batch(open_lake(settings.lake_uri), batch, args.max_images),
        result_path=args.result_path,
        context={"batch": batch},
    )


if __name__ == "__main__":
    raise SystemExit(main())
