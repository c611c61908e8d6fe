"""Train: fit the CNN on a prepared dataset version and log everything to MLflow.

Hyperparameters come from ``params.yaml`` (``train:``) and can be overridden on the command
line. Training is seeded, so the same data and params give the same model. The MLflow run
holds the params, per-epoch metrics, the data-check report and the model (with signature,
input example, class names and image size), tagged with its lineage: dataset version, code
revision and the calling orchestrator run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from ml_tasks.core import events
from ml_tasks.core.command import command_app, entry_point, report
from ml_tasks.core.lake import open_lake
from ml_tasks.core.options import CallerRunId, DatasetVersion, NoProgress, ResultPath
from ml_tasks.core.settings import Settings, load_params
from ml_tasks.data.prepared import PreparedData, load_prepared
from ml_tasks.model.tracking import RetryBudget, tracked
from ml_tasks.model.training import fit, log_classifier
from ml_tasks.resolve_dataset import resolve_dataset_version


@dataclass(frozen=True)
class Trained:
    """A finished training: the MLflow run, the logged model and its validation scores."""

    mlflow_run_id: str
    model_uri: str
    logged_model_uri: str
    dataset_version: str
    params: dict[str, Any]
    val_accuracy: float
    val_loss: float


def train(
    settings: Settings,
    dataset_version: str,
    overrides: dict[str, Any],
    *,
    caller_run_id: str | None = None,
    logical_date: str | None = None,
    progress: bool = True,
    use_best_params: bool = False,
) -> Trained:
    """Train and log one run; ``use_best_params`` starts from the dataset version's latest
    tuned params (``ml_tasks.tune``) and tags the run with their study and trial."""
    import mlflow

    from ml_tasks.model.open_runs import close_run_after_failure, fail_abandoned_runs
    from ml_tasks.model.tracking import (
        TrackingUnavailable,
        is_unreachable,
        lineage_tags,
        use_mlflow,
    )
    from ml_tasks.model.tuning import tuned_params

    tuned, tuned_tags = tuned_params(settings, dataset_version) if use_best_params else ({}, {})
    hp = {
        **load_params(settings.params_path)["train"],
        **tuned,
        **{k: v for k, v in overrides.items() if v is not None},
    }
    data = load_prepared(settings, dataset_version)
    experiment_id = use_mlflow(settings)
    fail_abandoned_runs(settings, experiment_id, caller_run_id)
    tags = {**lineage_tags(settings, dataset_version, caller_run_id), **tuned_tags}
    if logical_date:
        tags["flywheel.logical_date"] = logical_date
    # Not ``with start_run()``: on a failure its exit ends the run with a full retry budget
    # per request; close_run_after_failure makes one quick attempt and keeps a record.
    run_id = mlflow.start_run(experiment_id=experiment_id, tags=tags).info.run_id
    try:
        result = _train_in_run(settings, data, dataset_version, hp, run_id, progress=progress)
        mlflow.end_run()
    except BaseException as exc:
        closed = close_run_after_failure(settings, run_id, exc)
        if isinstance(exc, Exception) and is_unreachable(exc):
            raise TrackingUnavailable(
                settings.tracking_uri, exc, open_run=None if closed else run_id
            ) from exc
        raise
    return result


def _train_in_run(
    settings: Settings,
    data: PreparedData,
    dataset_version: str,
    hp: dict[str, Any],
    run_id: str,
    *,
    progress: bool,
) -> Trained:
    """Log params, data checks, per-epoch metrics and the model to the active MLflow run."""
    import mlflow

    mlflow.log_params({**hp, "dataset_version": dataset_version, "classes": ",".join(data.classes)})
    mlflow.log_metrics(
        {f"images_{s}": int((data.split == s).sum()) for s in ("train", "val", "test")}
    )
    lake = open_lake(settings.lake_uri)
    if lake.exists(f"prepared/{dataset_version}/checks.json"):
        report = json.loads(lake.read_bytes(f"prepared/{dataset_version}/checks.json"))
        mlflow.log_dict(report, "data_checks.json")
        mlflow.set_tag("flywheel.data_checks", "passed" if report.get("success") else "failed")
    model, history = fit(
        data,
        hp,
        progress=progress,
        on_epoch=lambda epoch, m: mlflow.log_metrics(m, step=epoch),
    )
    info = log_classifier(model, data)
    mlflow.set_tag("flywheel.model_uri", info.model_uri)
    final = history[-1]
    events.emit(
        "trained",
        mlflow_run_id=run_id,
        dataset_version=dataset_version,
        epochs=len(history),
        val_accuracy=round(final["val_accuracy"], 4),
    )
    return Trained(
        mlflow_run_id=run_id,
        model_uri=f"runs:/{run_id}/model",
        logged_model_uri=info.model_uri,
        dataset_version=dataset_version,
        params=hp,
        val_accuracy=final["val_accuracy"],
        val_loss=final["val_loss"],
    )


def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise typer.BadParameter(f"{value} is not positive")
    return value


app = command_app()
HYPERPARAMETERS = "hyperparameters (default: params.yaml train:)"


@app.command(
    epilog="Exit codes: 0 done, 2 usage, 3 bad input (do not retry), 75 the MLflow tracking "
    f"server did not answer (retry later). By default MLflow retries each request: "
    f"{RetryBudget.from_env({}).describe()}; set those variables to change it."
)
def train_command(
    dataset_version: DatasetVersion = None,
    caller_run_id: CallerRunId = None,
    logical_date: Annotated[
        str | None, typer.Option(help="the data interval this run stands for (backfills)")
    ] = None,
    no_progress: NoProgress = False,
    use_best_params: Annotated[
        bool,
        typer.Option(
            "--use-best-params",
            help="start from the dataset version's latest tuned params (python -m "
            "ml_tasks.tune); options given here still win",
        ),
    ] = False,
    epochs: Annotated[int | None, typer.Option(min=1, rich_help_panel=HYPERPARAMETERS)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, rich_help_panel=HYPERPARAMETERS)] = None,
    learning_rate: Annotated[
        float | None, typer.Option(callback=_positive, rich_help_panel=HYPERPARAMETERS)
    ] = None,
    weight_decay: Annotated[float | None, typer.Option(rich_help_panel=HYPERPARAMETERS)] = None,
    channels: Annotated[int | None, typer.Option(min=1, rich_help_panel=HYPERPARAMETERS)] = None,
    hidden: Annotated[int | None, typer.Option(min=1, rich_help_panel=HYPERPARAMETERS)] = None,
    seed: Annotated[int | None, typer.Option(rich_help_panel=HYPERPARAMETERS)] = None,
    result_path: ResultPath = None,
) -> None:
    """Train the CNN on a prepared dataset version; log the run and model to MLflow."""
    overrides = {
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "weight_decay": weight_decay,
        "channels": channels,
        "hidden": hidden,
        "seed": seed,
    }

    def body(settings: Settings) -> Trained:
        version = resolve_dataset_version(dataset_version)
        return train(
            settings,
            version,
            overrides,
            caller_run_id=caller_run_id,
            logical_date=logical_date,
            progress=not no_progress,
            use_best_params=use_best_params,
        )

    report("train", tracked(body), result_path=result_path, dataset_version=dataset_version)


main = entry_point(app, "ml_tasks.train")

if __name__ == "__main__":
    raise SystemExit(main())
