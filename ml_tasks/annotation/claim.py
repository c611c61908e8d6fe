"""Claim: move up to a batch of waiting images out of ``incoming/`` into ``annotation/<batch>/``.

An image waits when its sidecar exists (the model service writes the sidecar after the image).
Claiming must never lose an image, never claim one twice, and survive a crash at any point:

1. **Ledger.** The run reserves its images in the claim ledger
   (:mod:`~ml_tasks.annotation.ledger`): two runs never hold the same image, and a retried run
   finds its reservation again.
2. **Manifest.** ``annotation/<batch>/manifest.json`` lists what the batch reserved, *before*
   anything moves, so a retried run resumes the same images.
3. **Copy, verify, delete.** Image and sidecar are copied, the copy verified (S3: the copy's
   ETag, the MD5 of a single-part object, equals the listed source's; local: SHA-256 of both
   files), and only then are the sources deleted (sidecars first, so a half-deleted pair is
   never seen as waiting). The manifest is then marked ``claimed`` and the ledger entry closed.

On a retry, an image whose copy exists and whose source is gone was already moved; one whose
source and copy are both gone was taken and finished by another run before we listed it: it is
dropped from this batch.

``python -m ml_tasks.annotation.claim --batch B --max-images N``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from ml_tasks.annotation.batches import (
    INCOMING,
    batch_key,
    read_json_if_exists,
    sidecar_of,
    write_json,
)
from ml_tasks.annotation.ledger import close_entry, prune_ledger, reserve
from ml_tasks.annotation.options import Batch, RunId, report_batch
from ml_tasks.annotation.storage import (
    Listed,
    check_claimable,
    copy_verified,
    listing,
    parallel,
)
from ml_tasks.core import events
from ml_tasks.core.command import command_app, entry_point
from ml_tasks.core.lake import Lake, open_lake
from ml_tasks.core.options import ResultPath
from ml_tasks.core.step import StepError


@dataclass(frozen=True)
class Claimed:
    batch: str
    images: int
    dropped: int
    resumed: bool
    manifest: str  # the manifest's URL


def claim_batch(lake: Lake, batch: str, max_images: int) -> Claimed:
    """Claim up to ``max_images`` waiting images into ``annotation/<batch>/``; idempotent."""
    if max_images < 1:
        raise StepError("--max-images must be at least 1")
    check_claimable(lake)
    manifest_key = batch_key(batch, "manifest.json")
    manifest = read_json_if_exists(lake, manifest_key)
    resumed = manifest is not None
    if manifest is None:
        reserved = reserve(lake, batch, max_images)
        resumed = reserved.adopted
        found = reserved.listing
        manifest = {
            "batch": batch,
            "state": "claiming",
            "created_at": datetime.now(UTC).isoformat(),
            "ledger": reserved.entry,
            "images": reserved.images,
        }
        write_json(lake, manifest_key, manifest)
    else:
        found = listing(lake, INCOMING)
    if manifest["state"] != "claimed":
        manifest = move_images(lake, batch, manifest, found)
        write_json(lake, manifest_key, manifest)
    # The entry closes last: while it is open no other run can take these images.
    pruned = 0
    if manifest.get("ledger") is not None:
        close_entry(lake, int(manifest["ledger"]))
        try:
            pruned = prune_ledger(lake)
        except Exception as exc:  # housekeeping only: the claim itself is complete
            events.emit("ledger_not_pruned", level="warning", batch=batch, error=str(exc))
    images = manifest["images"]
    dropped = len(manifest.get("dropped", []))
    events.emit(
        "images_claimed",
        batch=batch,
        images=len(images),
        resumed=resumed,
        dropped=dropped,
        ledger_entry=manifest.get("ledger"),
        ledger_pruned=pruned,
    )
    return Claimed(batch, len(images), dropped, resumed, lake.url(manifest_key))


def move_images(
    lake: Lake, batch: str, manifest: dict[str, Any], found: dict[str, Listed]
) -> dict[str, Any]:
    """Copy, verify, then delete each claimed image and sidecar; returns the final manifest.

    ``found`` is the listing of ``incoming/`` the sources are copied and verified against.
    """
    sources: list[str] = [
        item if isinstance(item, str) else item["source"] for item in manifest["images"]
    ]
    already = listing(lake, batch_key(batch))

    def move(source: str) -> dict[str, Any] | None:
        name = source.rsplit("/", 1)[-1]
        pairs = [
            (source, batch_key(batch, name)),
            (sidecar_of(source), batch_key(batch, sidecar_of(name))),
        ]
        for src, dst in pairs:
            if src in found:
                try:
                    copy_verified(lake, src, dst, found[src])
                except Exception:
                    # Gone since we listed it: another run finished with it first (a resumed
                    # batch's listing is new, its entry old). Gone means theirs, not lost.
                    if lake.exists(src):
                        raise
                    return None
            elif dst not in already:
                return None  # taken and finished by another run before our listing
        return {"source": source, "image": pairs[0][1], "sidecar": pairs[1][1], "name": name}

    moved = parallel(move, sources)
    kept = [m for m in moved if m is not None]
    dropped = [s for s, m in zip(sources, moved, strict=True) if m is None]
    # Sidecars first: an image without its sidecar is not "waiting", so never re-claimed.
    lake.delete_many([sidecar_of(m["source"]) for m in kept if sidecar_of(m["source"]) in found])
    lake.delete_many([m["source"] for m in kept if m["source"] in found])
    return {
        **manifest,
        "state": "claimed",
        "images": kept,
        "dropped": dropped,
        "claimed_at": datetime.now(UTC).isoformat(),
    }


app = command_app()


@app.command()
def claim(
    max_images: Annotated[int, typer.Option(min=1, help="claim at most this many")],
    run_id: RunId = None,
    batch: Batch = None,
    result_path: ResultPath = None,
) -> None:
    """Claim up to a batch of waiting images from incoming/ (copy, verify, delete)."""
    report_batch(
        "claim",
        (run_id, batch, result_path),
        lambda settings, name: claim_batch(open_lake(settings.lake_uri), name, max_images),
    )


main = entry_point(app, "ml_tasks.annotation.claim")

if __name__ == "__main__":
    raise SystemExit(main())
