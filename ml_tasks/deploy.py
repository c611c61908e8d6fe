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
Repeating a command is safe: a retry finds the alias already moved and changes nothing. The
library is :mod:`ml_tasks.serving.deployment` (deploy, roll back, finish) over
:mod:`ml_tasks.model.registry` and :mod:`ml_tasks.model.approval`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from ml_tasks.core.command import command_app, entry_point, report
from ml_tasks.core.exit_codes import EXIT_STEP_ERROR
from ml_tasks.core.options import CallerRunId, ResultPath
from ml_tasks.core.settings import load_settings
from ml_tasks.core.step import StepError, StepResult
from ml_tasks.model import approval
from ml_tasks.model.tracking import tracked
from ml_tasks.serving import deployment


def _given(value: str) -> str:
    """A model version from the orchestrator: empty (or "None") means nothing was registered."""
    if value in ("", "None"):
        raise typer.BadParameter("empty: nothing was registered")
    return value


ModelVersion = Annotated[
    str, typer.Option(callback=_given, help="the registered model version", show_default=False)
]
CanaryPercent = Annotated[
    int | None, typer.Option(help="send this share of traffic to the new version first")
]
Finisher = Annotated[
    str, typer.Option("--who", help="who finishes it (the approver stays on record)")
]

app = command_app(
    help="Deploy: make an approved model version the champion, or record its rejection."
)


def run_deploy(
    action: Callable[..., StepResult], model_version: str | None, result_path: Path | None
) -> None:
    """Run ``action(settings, model_version)`` (``action(settings)`` without a version) as the
    deploy step; an MLflow that does not answer exits 75."""
    version = () if model_version is None else (model_version,)
    report(
        "deploy",
        tracked(lambda settings: action(settings, *version)),
        result_path=result_path,
        model_version=model_version,
    )


@app.command()
def promote(
    model_version: ModelVersion,
    approved_by: Annotated[str, typer.Option(help="who approved", show_default=False)],
    canary_percent: CanaryPercent = None,
    caller_run_id: CallerRunId = None,
    result_path: ResultPath = None,
) -> None:
    """Move champion to an approved version."""
    chosen = partial(deployment.promote, approved_by=approved_by, canary_percent=canary_percent)
    run_deploy(partial(chosen, caller_run_id=caller_run_id), model_version, result_path)


@app.command()
def reject(
    model_version: ModelVersion,
    rejected_by: Annotated[
        str, typer.Option(help="who rejected (or 'timeout')", show_default=False)
    ],
    reason: Annotated[str, typer.Option(help="why")] = "rejected at the approval gate",
    caller_run_id: CallerRunId = None,
    result_path: ResultPath = None,
) -> None:
    """Record that a version was not approved."""
    run_deploy(
        partial(
            approval.reject, rejected_by=rejected_by, reason=reason, caller_run_id=caller_run_id
        ),
        model_version,
        result_path,
    )


@app.command()
def rollback(
    model_version: ModelVersion,
    who: Annotated[str, typer.Option(help="who rolls back", show_default=False)],
    result_path: ResultPath = None,
) -> None:
    """Restore the champion a version replaced."""
    run_deploy(partial(deployment.rollback, who=who), model_version, result_path)


@app.command()
def render(model_version: ModelVersion, canary_percent: CanaryPercent = None) -> None:
    """Print the validated InferenceService."""
    from ml_tasks.serving.inference_service import to_yaml

    try:
        manifest = deployment.render_manifest(load_settings(), model_version, canary_percent)
    except StepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_STEP_ERROR) from exc
    print(to_yaml(manifest), end="")


@app.command()
def finish(who: Finisher = "deploy finish", result_path: ResultPath = None) -> None:
    """Deploy an approved version whose deploy did not finish (still the challenger)."""
    run_deploy(partial(deployment.finish, who=who), None, result_path)


main = entry_point(app, "ml_tasks.deploy")

if __name__ == "__main__":
    raise SystemExit(main())
