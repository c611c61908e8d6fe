"""The approval gate's answers as the registry keeps them: a rejection recorded on the version,
and the approved versions whose deploy never finished.

The gate writes each answer to the event log before deploy runs, so an approval outlives a
deploy that failed or a run that stopped in between; :func:`undone_deploys` finds it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ml_tasks.core import events
from ml_tasks.core.settings import Settings
from ml_tasks.model.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_APPROVAL,
    TAG_DATASET,
    alias_version,
    drop_challenger,
    registered_version,
    registry_client,
    tag_version,
)


@dataclass(frozen=True)
class Rejected:
    """A version that was not approved, and the champion that stays."""

    model_name: str
    model_version: str
    approval: str
    rejected_by: str
    reason: str
    champion: str | None


def reject(
    settings: Settings,
    model_version: str,
    *,
    rejected_by: str,
    reason: str,
    caller_run_id: str | None = None,
) -> Rejected:
    """Record that version N was not approved; it stops being the pending challenger."""
    client = registry_client(settings)
    name = settings.model_name
    mv = registered_version(client, name, model_version)
    tag_version(
        client,
        name,
        model_version,
        {
            TAG_APPROVAL: "rejected",
            "flywheel.rejected_by": rejected_by,
            "flywheel.rejection_reason": reason,
        },
    )
    drop_challenger(client, name, model_version, who=rejected_by, reason="rejected")
    events.emit(
        "rejection_recorded",
        model_version=model_version,
        who=rejected_by,
        reason=reason,
        caller_run_id=caller_run_id,
        dataset_version=mv.tags.get(TAG_DATASET),
    )
    return Rejected(
        model_name=name,
        model_version=model_version,
        approval="rejected",
        rejected_by=rejected_by,
        reason=reason,
        champion=alias_version(client, name, CHAMPION),
    )


@dataclass(frozen=True)
class UndoneDeploy:
    """An approved version that is still the challenger: its deploy never finished."""

    model_version: str
    approved_by: str
    approved_in_run: str | None
    approved_at: str | None


def undone_deploys(settings: Settings, client: Any) -> list[UndoneDeploy]:
    """Approved versions whose deploy never finished (at most one: the pending challenger).

    ``promote`` removes ``challenger`` from the version it deploys and ``reject`` from the one
    it rejects, so a challenger whose last approval answer was Approve was left undone. The
    answer is in the event log (the gate writes it before deploy runs); the registration
    event of the same DAG run must name the challenger's MLflow run, so an approval recorded
    against another registry's version N is never taken for this one's.
    """
    name = settings.model_name
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is None or challenger == alias_version(client, name, CHAMPION):
        return []
    logged = events.read_events(settings.log_path)
    answers = [
        e
        for e in logged
        if e.get("action") == "gate_decided"
        and e.get("gate") == "approval"
        and str(e.get("model_version")) == challenger
    ]
    if not answers or answers[-1].get("decision") != "approve":
        return []
    approval = answers[-1]
    run_id = client.get_model_version(name, challenger).run_id
    registered_in_run = any(
        e.get("action") == "registration_decided"
        and e.get("run_id") == approval.get("run_id")
        and e.get("mlflow_run_id") == run_id
        for e in logged
    )
    if not registered_in_run:
        return []
    return [
        UndoneDeploy(
            model_version=challenger,
            approved_by=str(approval.get("who")),
            approved_in_run=approval.get("run_id"),
            approved_at=approval.get("ts"),
        )
    ]
