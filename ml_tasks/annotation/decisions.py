"""What people decided in Label Studio, and the dataset's folders made to agree with it.

Reads what Label Studio's export storage wrote to ``labeled/`` in the lake (one JSON object per
annotation, rewritten when the annotation is edited). The lake rather than Label Studio's API:
it is the record the loop keeps anyway, ingest needs no Label Studio credentials, and it works
while Label Studio is down or being upgraded.

For each task, its newest submitted annotation decides (a skipped task waits):

- ``quality: unusable`` -> the image goes to ``quarantine/annotation/`` with the reason, and
  leaves the dataset if an earlier annotation had put it there;
- else the human's ``label`` (a correction wins over the model's guess) -> the image is stored
  as ``data/images/<label>/<content name>`` and removed from any other class folder, so an
  annotation edited after ingest moves the image on the next ingest, never duplicates it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ml_tasks.annotation.batches import LABELED, QUARANTINE, write_json
from ml_tasks.annotation.storage import parallel
from ml_tasks.annotation.tasks import LABEL, QUALITY, REASON, UNUSABLE
from ml_tasks.core.lake import Lake, LakeError
from ml_tasks.core.settings import Settings
from ml_tasks.core.step import StepError


@dataclass(frozen=True)
class Decision:
    """What the newest annotation of one task says about its image."""

    task_id: int
    annotation_id: int
    key: str  # the image in the lake
    name: str  # its content name, <sha16>.png
    content_hash: str | None
    label: str | None  # None when unusable
    reason: str | None
    model_label: str | None


def read_annotations(lake: Lake) -> list[dict[str, Any]]:
    keys = [k for k in lake.list(LABELED) if not k.endswith("/")]
    return [json.loads(raw) for raw in parallel(lake.read_bytes, keys)]


def choices(result: list[dict[str, Any]], from_name: str) -> list[str]:
    for region in result:
        if region.get("from_name") == from_name:
            return [str(c) for c in region.get("value", {}).get("choices", [])]
    return []


def text(result: list[dict[str, Any]], from_name: str) -> str | None:
    for region in result:
        if region.get("from_name") == from_name:
            lines = region.get("value", {}).get("text", [])
            return " ".join(str(t) for t in lines).strip() or None
    return None


def decide(annotations: list[dict[str, Any]], classes: list[str]) -> tuple[list[Decision], int]:
    """The newest submitted annotation per task, as decisions; also counts the incomplete ones."""
    newest: dict[int, dict[str, Any]] = {}
    for ann in annotations:
        if ann.get("was_cancelled") or not ann.get("task"):
            continue
        task_id = int(ann["task"]["id"])
        order = (str(ann.get("updated_at") or ""), int(ann["id"]))
        if task_id not in newest or order > newest[task_id]["_order"]:
            newest[task_id] = {**ann, "_order": order}
    decisions, incomplete = [], 0
    for task_id, ann in sorted(newest.items()):
        data = ann["task"].get("data", {})
        key = data.get("key")
        result = ann.get("result") or []
        labels = choices(result, LABEL)
        label = labels[0] if labels else None
        unusable = UNUSABLE in choices(result, QUALITY)
        if not key or (not unusable and label not in classes):
            incomplete += 1
            continue
        reason = None
        if unusable:
            who = (ann.get("completed_by") or {}).get("email") or "an annotator"
            reason = text(result, REASON) or f"marked unusable by {who}"
        decisions.append(
            Decision(
                task_id=task_id,
                annotation_id=int(ann["id"]),
                key=key,
                name=key.rsplit("/", 1)[-1],
                content_hash=data.get("content_hash"),
                label=None if unusable else label,
                reason=reason,
                model_label=data.get("model_label"),
            )
        )
    return decisions, incomplete


def apply_decisions(
    settings: Settings, lake: Lake, decisions: list[Decision], classes: list[str]
) -> dict[str, Any]:
    """Make ``data/images`` and ``quarantine/`` agree with the decisions; counts the changes."""
    from ml_tasks.data.images import content_hash

    data_dir = settings.data_dir
    counts: dict[str, Any] = {
        "added": 0,
        "moved": 0,
        "removed": 0,
        "labeled": 0,
        "quarantined": 0,
        "corrected": 0,
    }

    def fetch(decision: Decision) -> bytes | None:
        if decision.label and (data_dir / decision.label / decision.name).exists():
            return None  # already in place: no need to read it again
        if decision.label is None and lake.exists(QUARANTINE + decision.name):
            return None
        try:
            raw = lake.read_bytes(decision.key)
        except LakeError as exc:
            raise StepError(f"annotated image {decision.key} is missing from the lake") from exc
        if decision.content_hash and content_hash(raw) != decision.content_hash:
            raise StepError(f"{decision.key} does not match its content hash")
        return raw

    fetched = parallel(fetch, decisions)
    for decision, raw in zip(decisions, fetched, strict=True):
        elsewhere = [data_dir / c / decision.name for c in classes if c != decision.label]
        stale = [p for p in elsewhere if p.exists()]
        if decision.label is None:
            counts["quarantined"] += 1
            if raw is not None:
                lake.write_bytes(QUARANTINE + decision.name, raw)
                write_json(
                    lake,
                    QUARANTINE + decision.name.rsplit(".", 1)[0] + ".reason.json",
                    {
                        "reason": decision.reason,
                        "source": decision.key,
                        "task_id": decision.task_id,
                        "annotation_id": decision.annotation_id,
                    },
                )
        else:
            counts["labeled"] += 1
            counts["corrected"] += int(decision.model_label not in (None, decision.label))
            target = data_dir / decision.label / decision.name
            if raw is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                tmp.write_bytes(raw)
                tmp.replace(target)
                counts["moved" if stale else "added"] += 1
        for path in stale:
            path.unlink()
            counts["removed"] += int(decision.label is None)
    return counts
