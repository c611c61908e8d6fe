"""Tune: an Optuna study of the training function on a prepared dataset version.

``create`` makes the study (RDB storage, see :func:`ml_tasks.model.tuning.storage_url`) and its
MLflow parent run; any number of ``worker`` processes then run trials until the study holds
``--n-trials`` (claimed under a lock, so never more); ``finish`` puts the best params and value and
the plots on the parent run and writes the best params to the lake. ``run`` does all three in one
process. Each trial trains through :func:`ml_tasks.model.training.fit`, reports every epoch to the
pruner, and is an MLflow child run whose status and ``flywheel.tuning.state`` tag say COMPLETE,
PRUNED or FAIL. A worker that dies stops its trial's heartbeat: the next worker (or ``finish``)
marks that trial and its MLflow run failed. The library is :mod:`ml_tasks.model.tune_study`
(create, workers, trials) and :mod:`ml_tasks.model.tune_report` (finish).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from ml_tasks.core.command import command_app, entry_point, report
from ml_tasks.core.options import CallerRunId, DatasetVersion, NoProgress, ResultPath
from ml_tasks.core.settings import Settings
from ml_tasks.core.step import StepResult
from ml_tasks.model import tune_report, tune_study
from ml_tasks.model.tuning import load_tune_config
from ml_tasks.resolve_dataset import resolve_dataset_version

Study = Annotated[str | None, typer.Option(help="study name (default: model-version-time)")]
NamedStudy = Annotated[str, typer.Option(help="study name", show_default=False)]
Storage = Annotated[str | None, typer.Option(help="Optuna storage URL (default: see below)")]
NTrials = Annotated[int | None, typer.Option(min=1, help="trials in the study (default: params)")]
Timeout = Annotated[float | None, typer.Option(help="start no trial after this many seconds")]
WorkerIndex = Annotated[int, typer.Option(help="offsets the sampler seed")]
Threads = Annotated[int, typer.Option(help="torch threads")]

EPILOG = (
    "Storage: --storage, else FLYWHEEL_OPTUNA_STORAGE, else the Airflow Connection "
    "flywheel_optuna (AIRFLOW_CONN_FLYWHEEL_OPTUNA), else sqlite under the state folder. "
    "Exit codes: 0 done, 2 usage, 3 bad input, 75 a storage or MLflow that did not answer."
)
app = command_app(
    help="Tune the training hyperparameters with Optuna (space: params.yaml tune:); every trial "
    "is an MLflow child run of the study's run.",
    epilog=EPILOG,
)


def run_tune(
    command: str,
    study: str | None,
    result_path: Path | None,
    body: Callable[[Settings], StepResult],
) -> None:
    """Run ``body`` as step ``tune_<command>``; an unreachable storage or MLflow exits 75."""
    from ml_tasks.model.tracking import tracked

    report(
        f"tune_{command}",
        tracked(body),
        result_path=result_path,
        study=study,
    )


def new_study(
    settings: Settings,
    study: str | None,
    dataset_version: str | None,
    storage: str | None,
    caller_run_id: str | None,
) -> tune_study.StudyCreated:
    """Create ``study`` (default: named after the model, the dataset version and the time)."""
    version = resolve_dataset_version(dataset_version)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    name = study or f"{settings.model_name}-{version}-{stamp}"
    return tune_study.create(settings, version, name, storage, caller_run_id)


@app.command(epilog=EPILOG)
def run(
    study: Study = None,
    storage: Storage = None,
    dataset_version: DatasetVersion = None,
    caller_run_id: CallerRunId = None,
    n_trials: NTrials = None,
    timeout: Timeout = None,
    threads: Threads = 1,
    no_progress: NoProgress = False,
    result_path: ResultPath = None,
) -> None:
    """Create, run every trial here, finish (one process)."""
    options = tune_study.WorkerOptions(timeout, threads=threads, progress=not no_progress)

    def body(settings: Settings) -> tune_report.StudyReport:
        load_tune_config(settings)  # a bad tune: section is refused before anything else
        created = new_study(settings, study, dataset_version, storage, caller_run_id)
        tune_study.work(settings, created.study, n_trials, storage, options)
        return tune_report.finish(settings, created.study, storage=storage)

    run_tune("run", study, result_path, body)


@app.command(epilog=EPILOG)
def create(
    study: Study = None,
    storage: Storage = None,
    dataset_version: DatasetVersion = None,
    caller_run_id: CallerRunId = None,
    result_path: ResultPath = None,
) -> None:
    """Create the study and its MLflow parent run (before starting workers)."""
    run_tune(
        "create",
        study,
        result_path,
        lambda settings: new_study(settings, study, dataset_version, storage, caller_run_id),
    )


@app.command(epilog=EPILOG)
def worker(
    study: NamedStudy,
    storage: Storage = None,
    n_trials: NTrials = None,
    timeout: Timeout = None,
    worker_index: WorkerIndex = 0,
    threads: Threads = 1,
    result_path: ResultPath = None,
    no_progress: NoProgress = False,
) -> None:
    """Run trials of a created study until it holds --n-trials."""
    options = tune_study.WorkerOptions(timeout, worker_index, threads, not no_progress)
    run_tune(
        "worker",
        study,
        result_path,
        lambda settings: tune_study.work(settings, study, n_trials, storage, options),
    )


@app.command(epilog=EPILOG)
def finish(study: NamedStudy, storage: Storage = None, result_path: ResultPath = None) -> None:
    """Record the best trial and plots; write the best params to the lake."""
    run_tune(
        "finish",
        study,
        result_path,
        lambda settings: tune_report.finish(settings, study, storage=storage),
    )


main = entry_point(app, "ml_tasks.tune")

if __name__ == "__main__":
    raise SystemExit(main())
