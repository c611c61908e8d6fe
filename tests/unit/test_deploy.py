"""The deploy step's registry moves, against a real (embedded SQLite) MLflow registry:
promote records the previous champion, reject records the decision, rollback restores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ml_tasks.core import events
from ml_tasks.core.settings import load_settings
from ml_tasks.core.step import StepError
from ml_tasks.model.approval import reject
from ml_tasks.serving.deployment import promote, rollback


@pytest.fixture()
def registry(flywheel_home: Path) -> Any:
    """Model ``digits`` with three versions (sources need not hold a model to be moved)."""
    from mlflow import MlflowClient

    from ml_tasks.model.tracking import use_mlflow

    settings = load_settings()
    use_mlflow(settings)
    client = MlflowClient()
    client.create_registered_model(settings.model_name)
    for i in range(3):
        client.create_model_version(
            settings.model_name,
            source=f"file:///nowhere/{i}",
            tags={"flywheel.dataset_version": "f" * 32},
        )
    events.configure("test")
    return client


def logged(action: str) -> list[dict[str, Any]]:
    return [e for e in events.read_events(load_settings().log_path) if e["action"] == action]


def test_promote_then_promote_records_previous_and_rollback_restores(registry: Any) -> None:
    settings = load_settings()
    first = promote(settings, "1", approved_by="alice")
    assert first.previous_champion is None and first.moved
    registry.set_registered_model_alias("digits", "challenger", "2")
    second = promote(settings, "2", approved_by="bob", caller_run_id="manual__x")
    assert second.previous_champion == "1"
    mv = registry.get_model_version("digits", "2")
    assert mv.tags["flywheel.previous_champion"] == "1"
    assert mv.tags["flywheel.approved_by"] == "bob"
    assert "challenger" not in mv.aliases  # promoted: no longer pending
    assert str(registry.get_model_version_by_alias("digits", "champion").version) == "2"
    manifest = Path(settings.home / "lake" / "deployments" / "2" / "inferenceservice.yaml")
    assert "models:/digits/2" in manifest.read_text()
    # A retry changes nothing and keeps the first record of the previous champion.
    again = promote(settings, "2", approved_by="bob")
    assert again.moved is False and again.previous_champion == "1"
    moves = [(e["model_version"], e.get("previous_champion")) for e in logged("alias_moved")]
    assert moves == [("1", None), ("2", "1")]

    back = rollback(settings, "2", who="carol")
    assert back.model_version == "1"
    assert str(registry.get_model_version_by_alias("digits", "champion").version) == "1"
    assert logged("alias_moved")[-1]["reason"] == "rollback"


def test_reject_records_who_and_drops_the_challenger(registry: Any) -> None:
    settings = load_settings()
    registry.set_registered_model_alias("digits", "challenger", "3")
    result = reject(settings, "3", rejected_by="timeout", reason="no answer in time")
    assert result.approval == "rejected" and result.champion is None
    tags = registry.get_model_version("digits", "3").tags
    assert (tags["flywheel.approval"], tags["flywheel.rejected_by"]) == ("rejected", "timeout")
    assert "challenger" not in registry.get_model_version("digits", "3").aliases
    assert json.dumps(logged("rejection_recorded")[0]["reason"]) == '"no answer in time"'


def test_unknown_version_and_nothing_to_roll_back_are_step_errors(registry: Any) -> None:
    settings = load_settings()
    with pytest.raises(StepError, match="no version 9"):
        promote(settings, "9", approved_by="alice")
    promote(settings, "1", approved_by="alice")
    with pytest.raises(StepError, match="no previous champion"):
        rollback(settings, "1", who="carol")
