"""What an exported annotation means for the dataset (pure: no servers)."""

from __future__ import annotations

from typing import Any

from ml_tasks.annotation.decisions import decide
from ml_tasks.annotation.tasks import label_config, prediction

CLASSES = [str(c) for c in range(10)]


def exported(
    ann_id: int, task_id: int, result: list[dict[str, Any]], updated: str, **extra: Any
) -> dict[str, Any]:
    """An annotation as Label Studio's S3 export storage writes it (the fields we read)."""
    return {
        "id": ann_id,
        "result": result,
        "updated_at": updated,
        "was_cancelled": False,
        "completed_by": {"email": "ann@example.org"},
        "task": {
            "id": task_id,
            "data": {
                "key": f"annotation/b/{task_id:016x}.png",
                "content_hash": "h",
                "model_label": "3",
            },
        },
        **extra,
    }


def label(value: str) -> dict[str, Any]:
    return {
        "from_name": "label",
        "to_name": "image",
        "type": "choices",
        "value": {"choices": [value]},
    }


def test_the_newest_annotation_of_a_task_decides() -> None:
    decisions, incomplete = decide(
        [
            exported(1, 10, [label("3")], "2026-01-01T10:00:00Z"),
            exported(2, 10, [label("8")], "2026-01-01T11:00:00Z"),  # a second opinion, later
            exported(3, 11, [label("4")], "2026-01-01T10:00:00Z"),
        ],
        CLASSES,
    )
    assert incomplete == 0
    assert {(d.task_id, d.label) for d in decisions} == {(10, "8"), (11, "4")}


def test_unusable_wins_and_keeps_the_reason_skips_wait_and_junk_is_counted() -> None:
    quality = {
        "from_name": "quality",
        "to_name": "image",
        "type": "choices",
        "value": {"choices": ["unusable"]},
    }
    decisions, incomplete = decide(
        [
            exported(1, 10, [label("3"), quality], "t1"),
            exported(2, 11, [quality], "t1"),
            exported(3, 12, [label("3")], "t1", was_cancelled=True),
            exported(4, 13, [label("not-a-class")], "t1"),
        ],
        CLASSES,
    )
    assert [(d.task_id, d.label, d.reason) for d in decisions] == [
        (10, None, "marked unusable by ann@example.org"),
        (11, None, "marked unusable by ann@example.org"),
    ]
    assert incomplete == 1


def test_predictions_use_the_names_of_the_labelling_config() -> None:
    import xml.etree.ElementTree as ET

    classes = ["cat", 'say "hi"', "<b>"]
    view = ET.fromstring(label_config(classes))
    result = prediction("cat", 0.4, "digits@v3")["result"][0]
    (control,) = [c for c in view.iter("Choices") if c.get("name") == result["from_name"]]
    assert control.get("toName") == result["to_name"]
    assert view.find(f"Image[@name='{result['to_name']}']") is not None
    assert [c.get("value") for c in control.iter("Choice")] == classes  # escaped, in order
