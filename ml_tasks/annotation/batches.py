"""Where a batch of images lives in the lake, and the small JSON documents that describe it.

A batch is named after the orchestrator run that claimed it, so a retried run finds its own
batch again: ``annotation/<batch>/`` holds the claimed images and sidecars plus
``manifest.json`` (written first: what this batch claims), ``predictions.json`` (the
champion's guesses, most uncertain first) and ``tasks.json`` (the Label Studio task of each
image). Light: imports only the lake, so the orchestrator environment can use it too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from ml_tasks.core.lake import Lake, LakeError
from ml_tasks.core.step import StepError

INCOMING = "incoming/"
ANNOTATION = "annotation/"
CLAIMS = "annotation/.claims/"
LABELED = "labeled/"
QUARANTINE = "quarantine/annotation/"
IMAGE_SUFFIX = ".png"
SIDECAR_SUFFIX = ".json"


def batch_id(run_id: str) -> str:
    """A lake-safe batch name for a run id (which holds ``:`` and ``+``), stable across retries."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-.")[:60] or "batch"
    return f"{slug}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


def batch_key(batch: str, name: str = "") -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", batch):
        raise StepError(f"batch {batch!r}: only letters, digits, '.', '_' and '-' are allowed")
    return f"{ANNOTATION}{batch}/{name}"


def sidecar_of(image_key: str) -> str:
    """``incoming/2026-01-01/ab12.png`` -> ``incoming/2026-01-01/ab12.json`` (the contract)."""
    return image_key.removesuffix(IMAGE_SUFFIX) + SIDECAR_SUFFIX


def read_json(lake: Lake, key: str) -> Any:
    try:
        return json.loads(lake.read_bytes(key))
    except LakeError as exc:
        raise StepError(str(exc)) from exc


def read_json_if_exists(lake: Lake, key: str) -> Any:
    try:
        return json.loads(lake.read_bytes(key))
    except LakeError:
        return None


def write_json(lake: Lake, key: str, payload: Any) -> None:
    lake.write_bytes(key, (json.dumps(payload, indent=1, default=str) + "\n").encode())


def load_manifest(lake: Lake, batch: str) -> dict[str, Any]:
    """The claimed batch; a step after ``claim`` refuses a batch whose claim did not finish."""
    manifest = read_json_if_exists(lake, batch_key(batch, "manifest.json"))
    if manifest is None:
        raise StepError(f"batch {batch} has no manifest: run the claim step first")
    if manifest.get("state") != "claimed":
        raise StepError(f"batch {batch} is still being claimed: rerun the claim step")
    return dict(manifest)


def count_waiting(keys: Iterable[str], prefix: str = INCOMING) -> int:
    """Images under ``prefix`` whose sidecar is there too (the service writes it last)."""
    present = set(keys)
    return sum(
        1
        for key in present
        if key.startswith(prefix) and key.endswith(IMAGE_SUFFIX) and sidecar_of(key) in present
    )
