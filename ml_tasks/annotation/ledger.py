"""The claim ledger: which waiting images a run holds, so two runs never claim the same one.

A run reserves its images with one object, ``annotation/.claims/ledger/<n>.json`` (the batch
and its image keys), created *conditionally* (S3 ``If-None-Match: *``; a hard link, which
fails on an existing name, on a local lake) at the next free number ``n``. Before choosing, it
reads every open entry (one without ``<n>.done``) and leaves their images alone; losing the
race for ``n`` means another run just reserved: read again, choose again. Entries are
numbered without gaps, so the winner of ``n`` has seen every entry before it: two runs never
hold the same image, and there is no lock for a crashed run to hold forever. An open entry
naming this batch is ours (a retry after a crash): its images are resumed. One object per
batch, not one per image: a thousand images cost one conditional write instead of a thousand.

An entry left open by a run that is never retried keeps its images out of later claims: rerun
that run, or delete its entry to release them. Closed entries older than the newest are pruned
after each claim, so the ledger stays short.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from ml_tasks.annotation.batches import (
    CLAIMS,
    IMAGE_SUFFIX,
    INCOMING,
    read_json_if_exists,
    sidecar_of,
)
from ml_tasks.annotation.storage import Listed, listing, parallel
from ml_tasks.core.lake import Lake
from ml_tasks.core.step import StepError

LEDGER = CLAIMS + "ledger/"
ENTRY, DONE = ".json", ".done"
RESERVE_ATTEMPTS = 50


def ledger_key(entry: int, suffix: str = ENTRY) -> str:
    return f"{LEDGER}{entry:010d}{suffix}"


def ledger_number(key: str, suffix: str) -> int | None:
    """The entry number of a ledger key with ``suffix``; None for anything else there."""
    stem = key[len(LEDGER) :].removesuffix(suffix)
    return int(stem) if key.endswith(suffix) and stem.isdigit() else None


def waiting_images(found: dict[str, Listed]) -> list[str]:
    """Images under ``incoming/`` whose sidecar exists, oldest date folder first."""
    return sorted(
        key
        for key in found
        if key.startswith(INCOMING) and key.endswith(IMAGE_SUFFIX) and sidecar_of(key) in found
    )


@dataclass(frozen=True)
class Reservation:
    entry: int | None  # the ledger entry; None when nothing was waiting
    images: list[str]
    listing: dict[str, Listed]  # incoming/, listed after the ledger was read
    adopted: bool  # the entry was written by an earlier attempt of this batch


def reserve(lake: Lake, batch: str, limit: int) -> Reservation:
    """Reserve up to ``limit`` waiting images for ``batch`` in the claim ledger."""
    for _ in range(RESERVE_ATTEMPTS):
        keys = listing(lake, LEDGER)
        entries = sorted(n for n in (ledger_number(k, ENTRY) for k in keys) if n is not None)
        closed = {n for n in (ledger_number(k, DONE) for k in keys) if n is not None}
        still_open = [e for e in entries if e not in closed]
        held: set[str] = set()
        for entry, content in zip(
            still_open,
            parallel(lambda e: read_json_if_exists(lake, ledger_key(e)), still_open),
            strict=True,
        ):
            if content is None:  # closed and pruned since the listing: its images are gone
                continue
            if content["batch"] == batch:  # reserved by an attempt of ours that then crashed
                return Reservation(entry, list(content["images"]), listing(lake, INCOMING), True)
            held.update(content["images"])
        # Listed after reading the ledger: an image of a closed entry is already gone.
        found = listing(lake, INCOMING)
        chosen = [k for k in waiting_images(found) if k not in held][:limit]
        if not chosen:
            return Reservation(None, [], found, False)
        entry = entries[-1] + 1 if entries else 1
        body = {"batch": batch, "images": chosen, "at": datetime.now(UTC).isoformat()}
        if lake.create_if_absent(ledger_key(entry), json.dumps(body).encode()):
            return Reservation(entry, chosen, found, False)
        # Another run took number ``entry`` first: read what it reserved and choose again.
    raise StepError(
        f"could not reserve images after {RESERVE_ATTEMPTS} attempts: "
        "too many runs are claiming at once"
    )


def close_entry(lake: Lake, entry: int) -> None:
    """Release an entry's hold: its images have left ``incoming/``."""
    lake.write_bytes(ledger_key(entry, DONE), b"")


def prune_ledger(lake: Lake) -> int:
    """Delete the closed entries older than the newest one; returns how many went.

    Keeps the ledger a few objects long however many batches ran, so reserving stays one short
    listing. The newest entry stays even when closed (it carries the next number), and open
    entries stay (they hold their images). A closed entry's images already left ``incoming/``,
    so a run that finds one gone while reading loses nothing. Entries go before their ``.done``
    marks: a crash in between leaves a mark, pruned next time, never a reopened entry.
    """
    keys = listing(lake, LEDGER)
    entries = {n for n in (ledger_number(k, ENTRY) for k in keys) if n is not None}
    if not entries:
        return 0
    newest = max(entries)
    closed = [n for n in (ledger_number(k, DONE) for k in keys) if n is not None and n < newest]
    lake.delete_many([ledger_key(n) for n in closed if n in entries])
    lake.delete_many([ledger_key(n, DONE) for n in closed])
    return sum(1 for n in closed if n in entries)
