"""Comparing a trained model with the one it would replace, and registering it as the
``challenger``: the rules validate applies and the registry calls it makes.

The incumbent is the ``champion``; while nothing has been approved it is the pending
``challenger``, so re-running the same training never piles up equal versions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ml_tasks.core.settings import Settings
from ml_tasks.core.step import StepError

CHAMPION, CHALLENGER = "champion", "challenger"


def decide(
    new: dict[str, Any],
    incumbent: dict[str, Any] | None,
    rules: dict[str, Any],
    force: bool = False,
) -> tuple[bool, str]:
    """Whether to register the new model, and why (one sentence a person can read)."""
    floors = {"accuracy": float(rules["min_accuracy"]), "macro_f1": float(rules["min_macro_f1"])}
    for metric, floor in floors.items():
        if new[metric] < floor:
            return False, f"{metric} {new[metric]:.4f} is below the floor {floor:.4f}"
    if force:
        return True, "registration forced by the caller (floors passed)"
    if incumbent is None:
        return True, "no champion or challenger yet and the floors pass"
    margin = float(rules["min_improvement"])
    gain = new["accuracy"] - incumbent["metrics"]["accuracy"]
    who = f"{incumbent['alias']} v{incumbent['version']}"
    if gain >= margin:
        return (
            True,
            f"accuracy {new['accuracy']:.4f} beats {who} "
            f"({incumbent['metrics']['accuracy']:.4f}) by {gain:+.4f} >= {margin}",
        )
    return False, (
        f"accuracy {new['accuracy']:.4f} does not beat {who} "
        f"({incumbent['metrics']['accuracy']:.4f}) by the margin {margin} (gain {gain:+.4f})"
    )


def find_incumbent(client: Any, name: str) -> tuple[str, Any] | None:
    """The model to beat: the champion, else the pending challenger, else none."""
    from mlflow.exceptions import MlflowException

    from ml_tasks.model.tracking import is_unreachable

    for alias in (CHAMPION, CHALLENGER):
        try:
            return alias, client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if is_unreachable(exc):  # no answer is not "no such alias"
                raise
            continue
    return None


def register(client: Any, settings: Settings, run_id: str, tags: dict[str, str]) -> str:
    """Register the run's model (once: a retry finds the version it made) as ``challenger``."""
    import mlflow

    existing = client.search_model_versions(f"name='{settings.model_name}' and run_id='{run_id}'")
    if existing:
        version = str(existing[0].version)
    else:
        # MLflow 3 keeps the model as a logged model; train records its URI on the run.
        source = client.get_run(run_id).data.tags.get("flywheel.model_uri", f"runs:/{run_id}/model")
        version = str(mlflow.register_model(source, settings.model_name, tags=tags).version)
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, version, key, value)
    client.set_registered_model_alias(settings.model_name, CHALLENGER, version)
    return version


def read_train_result(train_result: Path) -> tuple[str, str | None]:
    """The MLflow run id and dataset version a train step's JSON result names."""
    try:
        result = json.loads(train_result.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StepError(
            f"cannot read {train_result} (the train step's --result-path): {exc}"
        ) from exc
    if not isinstance(result, dict) or result.get("status", "ok") != "ok":
        error = result.get("error") if isinstance(result, dict) else None
        raise StepError(f"{train_result} is not a finished training: {error or result!r}")
    if not result.get("mlflow_run_id"):
        raise StepError(f"{train_result} names no mlflow_run_id: is it the train step's result?")
    version = result.get("dataset_version")
    return str(result["mlflow_run_id"]), str(version) if version else None


def registration_tags(
    settings: Settings,
    run: Any,
    dataset_version: str,
    caller_run_id: str | None,
    new: dict[str, Any],
    reason: str,
) -> dict[str, str]:
    """The tags a registered version carries: its lineage, the run's params and data checks,
    its test scores, why it was registered, and the tuning study its params came from."""
    from ml_tasks.model.tracking import lineage_tags

    tags = {k: str(v) for k, v in lineage_tags(settings, dataset_version, caller_run_id).items()}
    tags.update(
        {
            "flywheel.params": json.dumps({k: v for k, v in run.data.params.items()}),
            "flywheel.data_checks": run.data.tags.get("flywheel.data_checks", "unknown"),
            "flywheel.test_accuracy": f"{new['accuracy']:.4f}",
            "flywheel.test_macro_f1": f"{new['macro_f1']:.4f}",
            "flywheel.decision_reason": reason,
        }
    )
    # Tuned params: the study and trial they came from (set by train --use-best-params).
    tags.update({k: v for k, v in run.data.tags.items() if k.startswith("flywheel.tuning.")})
    return tags
