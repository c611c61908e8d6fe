"""Deploying a model version: its validated InferenceService stored in the lake, then
``champion`` moved to it; rolling back; and finishing a deploy an approval left undone.

The manifest is written before the alias moves, so a champion always has the manifest it was
deployed with (``deployments/<N>/inferenceservice.yaml``). The previous champion is kept on N
as tag ``flywheel.previous_champion`` and in the ``alias_moved`` event, so :func:`rollback` (or
a person) can restore it. Repeating a move is safe: a retry finds the alias already moved and
changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ml_tasks.core import events
from ml_tasks.core.settings import Settings
from ml_tasks.core.step import StepError
from ml_tasks.model.approval import undone_deploys
from ml_tasks.model.registry import (
    CHAMPION,
    TAG_APPROVAL,
    TAG_DATASET,
    TAG_PREVIOUS,
    alias_version,
    drop_challenger,
    move_champion,
    registered_version,
    registry_client,
    tag_version,
)


def manifest_key(model_version: str) -> str:
    return f"deployments/{model_version}/inferenceservice.yaml"


def render_manifest(
    settings: Settings, model_version: str, canary_percent: int | None = None
) -> dict[str, Any]:
    """The validated InferenceService for a version (raises StepError when it would be refused)."""
    from ml_tasks.serving.inference_service import (
        InvalidManifest,
        ServingOptions,
        render_inference_service,
        validate_inference_service,
    )

    manifest = render_inference_service(
        settings.model_name,
        model_version,
        ServingOptions.from_env(canary_traffic_percent=canary_percent),
    )
    try:
        validate_inference_service(manifest)
    except (InvalidManifest, FileNotFoundError) as exc:
        raise StepError(str(exc)) from exc
    return manifest


@dataclass(frozen=True)
class Promoted:
    """The new champion, the one it replaced, and whether this call moved the alias."""

    model_name: str
    model_version: str
    alias: str
    previous_champion: str | None
    moved: bool
    manifest_uri: str
    service: str
    approved_by: str


def promote(
    settings: Settings,
    model_version: str,
    *,
    approved_by: str,
    caller_run_id: str | None = None,
    canary_percent: int | None = None,
) -> Promoted:
    """Render, validate and store the manifest, then move ``champion`` (in that order)."""
    from ml_tasks.core.lake import open_lake
    from ml_tasks.serving.inference_service import to_yaml

    client = registry_client(settings)
    name = settings.model_name
    mv = registered_version(client, name, model_version)
    manifest = render_manifest(settings, model_version, canary_percent)
    lake = open_lake(settings.lake_uri)
    lake.write_bytes(manifest_key(model_version), to_yaml(manifest).encode())
    manifest_uri = lake.url(manifest_key(model_version))
    dataset_version = mv.tags.get(TAG_DATASET)

    previous = alias_version(client, name, CHAMPION)
    moved = previous != model_version
    if not moved:
        # A retry after the move: keep the first record of the previous champion.
        recorded = mv.tags.get(TAG_PREVIOUS)
        previous = None if recorded in (None, "", "none") else recorded
    else:
        tags = {
            TAG_PREVIOUS: previous or "none",
            TAG_APPROVAL: "approved",
            "flywheel.approved_by": approved_by,
            "flywheel.deployed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if caller_run_id:
            tags["flywheel.deployed_by_run"] = caller_run_id
        tag_version(client, name, model_version, tags)
        move_champion(
            client,
            name,
            model_version,
            previous=previous,
            who=approved_by,
            reason="approved",
            caller_run_id=caller_run_id,
            dataset_version=dataset_version,
        )
    drop_challenger(client, name, model_version, who=approved_by, reason="promoted to champion")
    events.emit(
        "deployed",
        model_version=model_version,
        manifest_uri=manifest_uri,
        service=manifest["metadata"]["name"],
        previous_champion=previous,
        dataset_version=dataset_version,
        who=approved_by,
        backend=settings.backend,
        caller_run_id=caller_run_id,
    )
    service = str(manifest["metadata"]["name"])
    return Promoted(
        name, model_version, CHAMPION, previous, moved, manifest_uri, service, approved_by
    )


@dataclass(frozen=True)
class RolledBack:
    """The champion again (``model_version``) and the version it replaced."""

    model_name: str
    alias: str
    model_version: str
    rolled_back_from: str


def rollback(settings: Settings, model_version: str, *, who: str) -> RolledBack:
    """Move ``champion`` from N back to the version N replaced."""
    client = registry_client(settings)
    name = settings.model_name
    mv = registered_version(client, name, model_version)
    previous = mv.tags.get(TAG_PREVIOUS)
    if not previous or previous == "none":
        raise StepError(f"version {model_version} records no previous champion to roll back to")
    current = alias_version(client, name, CHAMPION)
    if current != model_version and current != previous:
        raise StepError(f"champion is v{current}, not v{model_version}: refusing to roll back")
    if current != previous:
        move_champion(client, name, previous, previous=model_version, who=who, reason="rollback")
    return RolledBack(name, CHAMPION, previous, model_version)


@dataclass(frozen=True)
class Finished:
    """The deploys an approval left undone that this call finished."""

    model_name: str
    finished: list[Promoted]


def finish(settings: Settings, *, who: str) -> Finished:
    """Promote each approved version whose deploy did not finish (see :func:`undone_deploys`)."""
    undone = undone_deploys(settings, registry_client(settings))
    if undone and settings.backend == "kubernetes":
        item = undone[0]
        raise StepError(
            f"{settings.model_name} v{item.model_version} was approved by "
            f"{item.approved_by} in DAG run {item.approved_in_run} but never deployed. On "
            "kubernetes the deploy applies the InferenceService and waits for Ready before "
            "moving champion, which this command cannot do: clear the `deploy` task of that "
            "DAG run in Airflow (Grid view → deploy → Clear) to run it again."
        )
    finished = []
    for item in undone:
        events.emit(
            "deploy_resumed",
            model_version=item.model_version,
            approved_by=item.approved_by,
            caller_run_id=item.approved_in_run,
            who=who,
            reason=f"approved in {item.approved_in_run} at {item.approved_at}; "
            "its deploy did not finish",
        )
        finished.append(
            promote(
                settings,
                item.model_version,
                approved_by=item.approved_by,
                caller_run_id=item.approved_in_run,
            )
        )
    return Finished(settings.model_name, finished)
