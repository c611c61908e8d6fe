"""Deploy: make an approved model version the ``champion``, or record its rejection.

Runs after the approval gate, as ``python -m ml_tasks.deploy <command>``:

- ``promote --model-version N --approved-by USER``: renders the KServe InferenceService for
  version N, validates it against KServe's CRD, writes it to the lake
  (``deployments/<N>/inferenceservice.yaml``), then moves alias ``champion`` to N. The previous
  champion is kept on N as tag ``flywheel.previous_champion`` and in the ``alias_moved`` event,
  so ``rollback`` (or a person) can restore it. On the ``local`` backend this *is* the deploy
  (a running ``python -m ml_tasks.serve`` watches the alias and swaps the new champion in within
  its ``--watch-seconds``, failing no request); on ``kubernetes`` the orchestrator applies
  the same manifest, waits for Ready, and only then runs ``promote``.
- ``reject --model-version N --rejected-by USER``: records the decision (tags, event) and
  removes the ``challenger`` alias from N, so the next candidate is compared with the champion.
- ``rollback --model-version N``: moves ``champion`` back to N's recorded previous champion.
- ``render --model-version N``: prints the validated manifest (what would be applied).
- ``finish``: deploys what an approval left undone. A version the approval gate approved
  (its ``gate_decided`` event) that is still the ``challenger`` was never deployed: the deploy
  task failed or the run stopped in between. ``finish`` promotes it for the approver, stamped
  with the approving run's id (``deploy_resumed`` event); ``make demo`` runs it first.

Every alias move and decision is an event (``python -m ml_tasks.audit --model-version N``).
Repeating a command is safe: a retry finds the alias already moved and changes nothing.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from ml_tasks.core import events
from ml_tasks.core.exit_codes import EXIT_STEP_ERROR
from ml_tasks.core.settings import Settings, load_settings
from ml_tasks.core.step import StepError, add_result_option, run_step
from ml_tasks.model.tracking import call_tracked

CHAMPION, CHALLENGER = "champion", "challenger"
TAG_PREVIOUS = "flywheel.previous_champion"
TAG_APPROVAL = "flywheel.approval"


def manifest_key(model_version: str) -> str:
    return f"deployments/{model_version}/inferenceservice.yaml"


def render(
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


def _client(settings: Settings) -> Any:
    from mlflow import MlflowClient

    from ml_tasks.model.tracking import use_mlflow

    use_mlflow(settings)
    return MlflowClient()


def alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    from ml_tasks.model.tracking import is_unreachable

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if is_unreachable(exc):  # no answer is not "no such alias"
            raise
        return None


def _model_version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    from ml_tasks.model.tracking import is_unreachable

    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if is_unreachable(exc):
            raise
        raise StepError(f"model {name} has no version {version}") from exc


def promote(
    settings: Settings,
    model_version: str,
    *,
    approved_by: str,
    caller_run_id: str | None = None,
    canary_percent: int | None = None,
) -> dict[str, Any]:
    """Render, validate and store the manifest, then move ``champion`` (in that order)."""
    from ml_tasks.core.lake import open_lake
    from ml_tasks.serving.inference_service import to_yaml

    client = _client(settings)
    name = settings.model_name
    mv = _model_version(client, name, model_version)
    manifest = render(settings, model_version, canary_percent)
    lake = open_lake(settings.lake_uri)
    lake.write_bytes(manifest_key(model_version), to_yaml(manifest).encode())
    manifest_uri = lake.url(manifest_key(model_version))
    dataset_version = mv.tags.get("flywheel.dataset_version")

    previous = alias_version(client, name, CHAMPION)
    if previous == model_version:
        # A retry after the move: keep the first record of the previous champion.
        recorded = mv.tags.get(TAG_PREVIOUS)
        previous = None if recorded in (None, "", "none") else recorded
        moved = False
    else:
        client.set_model_version_tag(name, model_version, TAG_PREVIOUS, previous or "none")
        client.set_model_version_tag(name, model_version, TAG_APPROVAL, "approved")
        client.set_model_version_tag(name, model_version, "flywheel.approved_by", approved_by)
        client.set_model_version_tag(
            name,
            model_version,
            "flywheel.deployed_at",
            datetime.now(UTC).isoformat(timespec="seconds"),
        )
        if caller_run_id:
            client.set_model_version_tag(
                name, model_version, "flywheel.deployed_by_run", caller_run_id
            )
        client.set_registered_model_alias(name, CHAMPION, model_version)
        moved = True
        events.emit(
            "alias_moved",
            alias=CHAMPION,
            model_version=model_version,
            previous_champion=previous,
            who=approved_by,
            caller_run_id=caller_run_id,
            dataset_version=dataset_version,
            reason="approved",
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
    return {
        "model_name": name,
        "model_version": model_version,
        "alias": CHAMPION,
        "previous_champion": previous,
        "moved": moved,
        "manifest_uri": manifest_uri,
        "service": manifest["metadata"]["name"],
        "approved_by": approved_by,
    }


def drop_challenger(client: Any, name: str, model_version: str, *, who: str, reason: str) -> None:
    """Version N is no longer pending: remove ``challenger`` if it still points at N (audited)."""
    if alias_version(client, name, CHALLENGER) == model_version:
        client.delete_registered_model_alias(name, CHALLENGER)
        events.emit(
            "alias_removed", alias=CHALLENGER, model_version=model_version, who=who, reason=reason
        )


def reject(
    settings: Settings,
    model_version: str,
    *,
    rejected_by: str,
    reason: str,
    caller_run_id: str | None = None,
) -> dict[str, Any]:
    """Record that version N was not approved; it stops being the pending challenger."""
    client = _client(settings)
    name = settings.model_name
    mv = _model_version(client, name, model_version)
    client.set_model_version_tag(name, model_version, TAG_APPROVAL, "rejected")
    client.set_model_version_tag(name, model_version, "flywheel.rejected_by", rejected_by)
    client.set_model_version_tag(name, model_version, "flywheel.rejection_reason", reason)
    drop_challenger(client, name, model_version, who=rejected_by, reason="rejected")
    events.emit(
        "rejection_recorded",
        model_version=model_version,
        who=rejected_by,
        reason=reason,
        caller_run_id=caller_run_id,
        dataset_version=mv.tags.get("flywheel.dataset_version"),
    )
    return {
        "model_name": name,
        "model_version": model_version,
        "approval": "rejected",
        "rejected_by": rejected_by,
        "reason": reason,
        "champion": alias_version(client, name, CHAMPION),
    }


def rollback(settings: Settings, model_version: str, *, who: str) -> dict[str, Any]:
    """Move ``champion`` from N back to the version N replaced."""
    client = _client(settings)
    name = settings.model_name
    mv = _model_version(client, name, model_version)
    previous = mv.tags.get(TAG_PREVIOUS)
    if not previous or previous == "none":
        raise StepError(f"version {model_version} records no previous champion to roll back to")
    current = alias_version(client, name, CHAMPION)
    if current != model_version and current != previous:
        raise StepError(f"champion is v{current}, not v{model_version}: refusing to roll back")
    if current != previous:
        client.set_registered_model_alias(name, CHAMPION, previous)
        events.emit(
            "alias_moved",
            alias=CHAMPION,
            model_version=previous,
            previous_champion=model_version,
            who=who,
            reason="rollback",
        )
    return {
        "model_name": name,
        "alias": CHAMPION,
        "model_version": previous,
        "rolled_back_from": model_version,
    }


def undone_deploys(settings: Settings, client: Any) -> list[dict[str, Any]]:
    """Approved versions whose deploy never finished (at most one: the pending challenger).

    ``promote`` removes ``challenger`` from the version it deploys and ``reject`` from the one
    it rejects, so a challenger whose last approval answer was Approve was left undone. The
    answer is in the event log (the gate writes it before deploy runs); the registration
    event of the same DAG run must name the challenger's MLflow run, so an approval recorded
    against another registry's version N is never taken for this one's.
    """
    from ml_tasks.core.events import read_events

    name = settings.model_name
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is None or challenger == alias_version(client, name, CHAMPION):
        return []
    logged = read_events(settings.log_path)
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
        {
            "model_version": challenger,
            "approved_by": str(approval.get("who")),
            "approved_in_run": approval.get("run_id"),
            "approved_at": approval.get("ts"),
        }
    ]


def finish(settings: Settings, *, who: str) -> dict[str, Any]:
    """Promote each approved version whose deploy did not finish (see :func:`undone_deploys`)."""
    client = _client(settings)
    undone = undone_deploys(settings, client)
    if undone and settings.backend == "kubernetes":
        item = undone[0]
        raise StepError(
            f"{settings.model_name} v{item['model_version']} was approved by "
            f"{item['approved_by']} in DAG run {item['approved_in_run']} but never deployed. On "
            "kubernetes the deploy applies the InferenceService and waits for Ready before "
            "moving champion, which this command cannot do: clear the `deploy` task of that "
            "DAG run in Airflow (Grid view → deploy → Clear) to run it again."
        )
    finished = []
    for item in undone:
        events.emit(
            "deploy_resumed",
            model_version=item["model_version"],
            approved_by=item["approved_by"],
            caller_run_id=item["approved_in_run"],
            who=who,
            reason=f"approved in {item['approved_in_run']} at {item['approved_at']}; "
            "its deploy did not finish",
        )
        finished.append(
            promote(
                settings,
                item["model_version"],
                approved_by=item["approved_by"],
                caller_run_id=item["approved_in_run"],
            )
        )
    return {"model_name": settings.model_name, "finished": finished}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_tasks.deploy", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "promote": sub.add_parser("promote", help="move champion to an approved version"),
        "reject": sub.add_parser("reject", help="record that a version was not approved"),
        "rollback": sub.add_parser("rollback", help="restore the champion a version replaced"),
        "render": sub.add_parser("render", help="print the validated InferenceService"),
    }
    finish_parser = sub.add_parser(
        "finish",
        help="deploy an approved version whose deploy did not finish (still the challenger)",
    )
    finish_parser.add_argument(
        "--who", default="deploy finish", help="who finishes it (the approver stays on record)"
    )
    add_result_option(finish_parser)
    for command in commands.values():
        command.add_argument("--model-version", required=True)
    commands["promote"].add_argument("--approved-by", required=True, help="who approved")
    commands["promote"].add_argument(
        "--canary-percent", type=int, help="send this share of traffic to the new version first"
    )
    commands["reject"].add_argument(
        "--rejected-by", required=True, help="who rejected (or 'timeout')"
    )
    commands["reject"].add_argument("--reason", default="rejected at the approval gate")
    commands["rollback"].add_argument("--who", required=True)
    commands["render"].add_argument("--canary-percent", type=int)
    for name in ("promote", "reject"):
        commands[name].add_argument("--caller-run-id", help="the orchestrator's run id")
    for name in ("promote", "reject", "rollback"):
        add_result_option(commands[name])
    args = parser.parse_args(argv)
    if getattr(args, "model_version", None) in ("", "None"):
        parser.error("--model-version is empty: nothing was registered")
    settings = load_settings()
    if args.command == "render":
        from ml_tasks.serving.inference_service import to_yaml

        try:
            print(to_yaml(render(settings, args.model_version, args.canary_percent)), end="")
        except StepError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_STEP_ERROR
        return 0
    bodies = {
        "promote": lambda: promote(
            settings,
            args.model_version,
            approved_by=args.approved_by,
            caller_run_id=args.caller_run_id,
            canary_percent=args.canary_percent,
        ),
        "reject": lambda: reject(
            settings,
            args.model_version,
            rejected_by=args.rejected_by,
            reason=args.reason,
            caller_run_id=args.caller_run_id,
        ),
        "rollback": lambda: rollback(settings, args.model_version, who=args.who),
        "finish": lambda: finish(settings, who=args.who),
    }
    return run_step(
        "deploy",
        lambda: call_tracked(settings, bodies[args.command]),
        result_path=args.result_path,
        context={"model_version": getattr(args, "model_version", None)},
    )


if __name__ == "__main__":
    raise SystemExit(main())
