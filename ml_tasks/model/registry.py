"""The model registry as deploy sees it: which version an alias names, a version's tags, and
the moves of ``champion`` and ``challenger``, each one an audit event.

MLflow keeps no history of alias moves, so every move here is also an event in the one log
(``python -m ml_tasks.audit --model-version N`` reads it back). A registry that does not answer
is never taken for "no such alias": its error is raised as it is, for the step contract to
report as unreachable (exit 75).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ml_tasks.core import events
from ml_tasks.core.settings import Settings
from ml_tasks.core.step import StepError

CHAMPION, CHALLENGER = "champion", "challenger"
TAG_PREVIOUS = "flywheel.previous_champion"
TAG_APPROVAL = "flywheel.approval"
TAG_DATASET = "flywheel.dataset_version"


def registry_client(settings: Settings) -> Any:
    """An MLflow client on the configured tracking server and registry."""
    from mlflow import MlflowClient

    from ml_tasks.model.tracking import use_mlflow

    use_mlflow(settings)
    return MlflowClient()


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version ``name@alias`` names, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    from ml_tasks.model.tracking import is_unreachable

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if is_unreachable(exc):  # no answer is not "no such alias"
            raise
        return None


def registered_version(client: Any, name: str, version: str) -> Any:
    """Version ``version`` of model ``name``; a version that does not exist is a StepError."""
    from mlflow.exceptions import MlflowException

    from ml_tasks.model.tracking import is_unreachable

    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if is_unreachable(exc):
            raise
        raise StepError(f"model {name} has no version {version}") from exc


def tag_version(client: Any, name: str, version: str, tags: Mapping[str, str]) -> None:
    """Set each tag on the version, in order."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def move_champion(
    client: Any,
    name: str,
    version: str,
    *,
    previous: str | None,
    who: str,
    reason: str,
    **ids: Any,
) -> None:
    """Point ``champion`` at ``version`` and record the move (``ids``: run and dataset ids)."""
    client.set_registered_model_alias(name, CHAMPION, version)
    events.emit(
        "alias_moved",
        alias=CHAMPION,
        model_version=version,
        previous_champion=previous,
        who=who,
        **ids,
        reason=reason,
    )


def drop_challenger(client: Any, name: str, model_version: str, *, who: str, reason: str) -> None:
    """Version N is no longer pending: remove ``challenger`` if it still points at N (audited)."""
    if alias_version(client, name, CHALLENGER) == model_version:
        client.delete_registered_model_alias(name, CHALLENGER)
        events.emit(
            "alias_removed", alias=CHALLENGER, model_version=model_version, who=who, reason=reason
        )
