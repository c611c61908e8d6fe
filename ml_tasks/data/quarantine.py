"""Quarantine: the files prepare keeps out of training, each copied to the lake with its reason.

A file that cannot be used (empty, truncated, corrupt, not an image, animated, 16-bit, CMYK,
too many pixels, outside a known class folder, a copy of another image, the same image under
two labels) is kept, not dropped: one record per path and version,
``quarantine/prepare/<version>/<path key>/``, holds the file and its ``reason.json``. A file
gone since the scan cannot be copied: it is accounted for as skipped instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ml_tasks.core.lake import Lake
from ml_tasks.data.images import content_hash
from ml_tasks.data.scan import Skipped

# Why a row is kept out of training: (reason code, detail), by row of the scan.
Problems = dict[int, tuple[str, str]]


@dataclass
class Quarantined:
    """A file kept out of training, and where its record is in the lake (``reason.json``)."""

    path: str
    content_hash: str
    reason: str
    detail: str
    record: str = ""


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


def quarantine_rows(
    lake: Lake,
    problems: Problems,
    rels: list[str],
    hashes: list[str],
    read: Callable[[str], bytes],
    dataset_version: str,
) -> tuple[list[Quarantined], list[Skipped]]:
    """Quarantine every row with a problem, in path order; a file that cannot be read any more
    is skipped instead, its problem kept in the detail.

    Every file is read before anything is written, so a version that must be fetched (the read
    raises) leaves the lake as it was.
    """
    rejected: dict[int, bytes] = {}
    skipped: list[Skipped] = []
    for i in sorted(problems):
        try:
            rejected[i] = read(rels[i])
        except OSError as exc:  # gone, or replaced by something that is not a file, since
            reason, detail = problems[i]
            skipped.append(Skipped(rels[i], "unreadable", f"{reason}: {detail}; {exc}"))
    quarantined: list[Quarantined] = []
    for i, data in rejected.items():
        item = Quarantined(rels[i], hashes[i], *problems[i])
        quarantine(lake, item, data, dataset_version)
        quarantined.append(item)
    return quarantined, skipped
