"""Validate: evaluate the new model against the current one and register it only if better.

Both models are scored on the same, current test split. The incumbent is the ``champion``
(serving); while nothing has been approved yet it is the pending ``challenger``, so re-running
the same training never piles up equal versions. The new model is registered (alias
``challenger``, lineage tags) when it passes the absolute floors and beats the incumbent by the
margin, all from ``params.yaml`` (``validate:``); with no incumbent the floors alone decide.
The decision, with both sets of metrics and the reason, is the step's result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ml_tasks.core import events
from ml_tasks.core.command import command_app, entry_point, report
from ml_tasks.core.options import CallerRunId, ResultPath
from ml_tasks.core.settings import Settings, load_params
from ml_tasks.core.step import StepError
from ml_tasks.model.tracking import tracked
from ml_tasks.model.validation import (
    CHALLENGER,
    decide,
    find_incumbent,
    read_train_result,
    register,
    registration_tags,
)
from ml_tasks.resolve_dataset import resolve_dataset_version


@dataclass(frozen=True)
class Validated:
    """The decision on a trained run: registered as challenger or not, and why."""

    decision: str
    registered: bool
    evaluate_only: bool
    reason: str
    model_name: str
    model_version: str | None
    mlflow_run_id: str
    dataset_version: str
    new: dict[str, float]
    """The new model's test accuracy and macro-F1."""
    incumbent: dict[str, Any] | None
    """Alias, version, run id and test scores of the model it was compared with."""


def validate(
    settings: Settings,
    run_id: str,
    dataset_version: str,
    *,
    force: bool = False,
    caller_run_id: str | None = None,
    min_improvement: float | None = None,
    evaluate_only: bool = False,
) -> Validated:
    """Test the run's model and the incumbent on the test split; log; register if better."""
    import matplotlib.pyplot as plt
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    from ml_tasks.data.prepared import load_prepared
    from ml_tasks.model.classifier import load_classifier
    from ml_tasks.model.evaluation import confusion_figure, evaluate, logged_metrics
    from ml_tasks.model.tracking import use_mlflow

    rules = load_params(settings.params_path)["validate"]
    if min_improvement is not None:
        rules = {**rules, "min_improvement": min_improvement}
    use_mlflow(settings)
    client = MlflowClient()
    data = load_prepared(settings, dataset_version)
    x_test, y_test = data.part("test")
    if len(x_test) == 0:
        raise StepError(f"dataset version {dataset_version} has no test images")
    new_model = load_classifier(f"runs:/{run_id}/model")
    if new_model.classes != data.classes:
        raise StepError(f"model classes {new_model.classes} differ from the data's {data.classes}")
    new_metrics = evaluate(new_model.predict_proba(x_test), y_test, data.classes)

    incumbent: dict[str, Any] | None = None
    found = find_incumbent(client, settings.model_name)
    if found is not None:
        alias, mv = found
        if mv.run_id == run_id:
            raise StepError(f"run {run_id} is already registered as {alias} v{mv.version}")
        old = load_classifier(f"models:/{settings.model_name}/{mv.version}")
        if old.classes == data.classes and old.image_size == data.x.shape[1]:
            incumbent = {
                "alias": alias,
                "version": str(mv.version),
                "run_id": mv.run_id,
                "metrics": evaluate(old.predict_proba(x_test), y_test, data.classes),
            }
        else:
            events.emit(
                "incumbent_incomparable",
                level="warning",
                model_version=mv.version,
                detail="its classes or image size differ from the current data",
            )

    better, reason = decide(new_metrics, incumbent, rules, force=force)
    # Evaluate only (backfills): the same test and verdict, logged; the registry is not touched.
    should_register = better and not evaluate_only
    if evaluate_only:
        reason = f"evaluation only, nothing registered ({reason})"
    # Logged through the client, not by reopening the run: ``start_run(run_id)`` would mark
    # the trained run RUNNING again, and FAILED (after a full retry budget) on any error here.
    metrics = logged_metrics(new_metrics, incumbent["metrics"] if incumbent else None)
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
        tags=[
            RunTag("flywheel.decision", "register" if better else "skip"),
            RunTag("flywheel.evaluate_only", str(evaluate_only).lower()),
            RunTag("flywheel.decision_reason", reason),
        ],
    )
    fig = confusion_figure(
        new_metrics["confusion_matrix"],
        data.classes,
        f"test split, accuracy {new_metrics['accuracy']:.3f}",
    )
    client.log_figure(run_id, fig, "confusion_matrix.png")
    plt.close(fig)
    client.log_dict(run_id, new_metrics, "test_metrics.json")

    version = None
    if should_register:
        tags = registration_tags(
            settings, client.get_run(run_id), dataset_version, caller_run_id, new_metrics, reason
        )
        version = register(client, settings, run_id, tags)
        events.emit(
            "alias_moved",
            model_version=version,
            alias=CHALLENGER,
            mlflow_run_id=run_id,
            dataset_version=dataset_version,
            who="validate",
        )
    events.emit(
        "registration_decided",
        decision="register" if better else "skip",
        evaluate_only=evaluate_only,
        reason=reason,
        mlflow_run_id=run_id,
        dataset_version=dataset_version,
        model_version=version,
        accuracy=round(new_metrics["accuracy"], 4),
        incumbent_version=incumbent["version"] if incumbent else None,
    )
    return Validated(
        decision="register" if better else "skip",
        registered=should_register,
        evaluate_only=evaluate_only,
        reason=reason,
        model_name=settings.model_name,
        model_version=version,
        mlflow_run_id=run_id,
        dataset_version=dataset_version,
        new={k: new_metrics[k] for k in ("accuracy", "macro_f1")},
        incumbent=(
            {k: incumbent[k] for k in ("alias", "version", "run_id")}
            | {m: incumbent["metrics"][m] for m in ("accuracy", "macro_f1")}
            if incumbent
            else None
        ),
    )


app = command_app()


@app.command(
    epilog="Exit codes: 0 done (registered or not: see the result's decision), 2 usage, 3 bad "
    "input (do not retry), 75 the MLflow tracking server did not answer (retry later; "
    "`python -m ml_tasks.train --help` states how long MLflow retries)."
)
def validate_command(
    run_id: Annotated[
        str | None,
        typer.Option(help="the MLflow run of the trained model (or give --train-result)"),
    ] = None,
    train_result: Annotated[
        Path | None,
        typer.Option(
            help="the train step's JSON result (holds the run id and the dataset version)"
        ),
    ] = None,
    dataset_version: Annotated[
        str | None,
        typer.Option(
            help="the prepared version to test on (default: the one --train-result names, else "
            "the one data/images.dvc records in the work tree)"
        ),
    ] = None,
    force_register: Annotated[
        bool,
        typer.Option(
            "--force-register",
            help="register when the floors pass even if it does not beat the incumbent",
        ),
    ] = False,
    caller_run_id: CallerRunId = None,
    evaluate_only: Annotated[
        bool,
        typer.Option(
            "--evaluate-only",
            help="test and decide as usual, but register nothing (backfills: history, not "
            "releases)",
        ),
    ] = False,
    min_improvement: Annotated[
        float | None,
        typer.Option(help="accuracy gain needed over the incumbent (default: params.yaml)"),
    ] = None,
    result_path: ResultPath = None,
) -> None:
    """Evaluate a trained run against the champion on the test split; register it as
    challenger only if it is better."""
    if (run_id is None) == (train_result is None):
        raise typer.BadParameter("give exactly one of --run-id and --train-result")

    def body(settings: Settings) -> Validated:
        run, trained_on = run_id, None
        if train_result is not None:
            run, trained_on = read_train_result(train_result)
        assert run is not None
        return validate(
            settings,
            run,
            resolve_dataset_version(dataset_version or trained_on),
            force=force_register,
            caller_run_id=caller_run_id,
            min_improvement=min_improvement,
            evaluate_only=evaluate_only,
        )

    report(
        "validate",
        tracked(body),
        result_path=result_path,
        dataset_version=dataset_version,
        mlflow_run_id=run_id,
    )


main = entry_point(app, "ml_tasks.validate")

if __name__ == "__main__":
    raise SystemExit(main())
