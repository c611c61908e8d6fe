"""The end of a study: trials of dead workers failed, then the best trial's params and value,
the counts by state and Optuna's plots on the MLflow parent run, and the best params in the lake
(``tuning/<dataset version>/<study>.json`` and ``latest.json``), which training can use.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ml_tasks.core import events
from ml_tasks.core.settings import Settings
from ml_tasks.core.step import StepError
from ml_tasks.model.tuning import PARENT_ATTR, load_study, load_tune_config, storage_url


def _save_plots(study: Any, client: Any, parent: str) -> list[str]:
    import tempfile
    from pathlib import Path

    import matplotlib
    import optuna

    matplotlib.use("Agg")
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    saved = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, draw in (
            ("optimization_history", plots.plot_optimization_history),
            ("param_importances", plots.plot_param_importances),
            ("parallel_coordinate", plots.plot_parallel_coordinate),
        ):
            try:
                axes = draw(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances need 2 complete trials
                client.set_tag(parent, f"flywheel.tuning.plot.{name}", f"not drawn: {exc}"[:250])
                continue
            figure = getattr(axes, "figure", None) or plt.gcf()
            path = Path(tmp) / f"{name}.png"
            figure.savefig(path, bbox_inches="tight", dpi=100)
            plt.close("all")
            client.log_artifact(parent, str(path), "plots")
            saved.append(f"plots/{name}.png")
    return saved


@dataclass(frozen=True)
class StudyReport:
    """The best trial (what the lake's best-params file holds), the counts by state, the plots."""

    study: str
    dataset_version: str
    trial: int
    metric: str
    value: float | None
    params: dict[str, Any]
    mlflow_parent_run_id: str
    mlflow_run_id: str | None
    storage: str
    finished_at: str
    counts: dict[str, int]
    plots: list[str]
    best_params_uri: str


def finish(settings: Settings, study_name: str, *, storage: str | None = None) -> StudyReport:
    """Fail the trials of dead workers, then record the best trial and plots; returns a summary."""
    import json

    import optuna
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from ml_tasks.core.lake import open_lake
    from ml_tasks.model.tracking import use_mlflow
    from ml_tasks.model.tuning import best_params_key

    config = load_tune_config(settings)
    url = storage_url(settings, storage)
    use_mlflow(settings)
    study = load_study(config, url, study_name)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    running = optuna.trial.TrialState.RUNNING
    deadline = time.monotonic() + config.grace_period + 2 * config.heartbeat_interval
    while study.get_trials(deepcopy=False, states=(running,)) and time.monotonic() < deadline:
        optuna.storages.fail_stale_trials(study)
        time.sleep(1)
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    client = MlflowClient()
    parent = str(study.user_attrs[PARENT_ATTR])
    dataset_version = str(study.user_attrs["dataset_version"])
    for state, n in counts.items():
        client.log_metric(parent, f"trials_{state.lower()}", n)
    if not counts.get("COMPLETE"):
        client.set_terminated(parent, "FAILED")
        raise StepError(f"study {study_name}: no trial completed ({counts})")
    best = study.best_trial
    client.log_batch(parent, params=[Param(f"best_{k}", str(v)) for k, v in best.params.items()])
    client.log_metric(parent, f"best_{config.metric}", float(best.value or 0.0))
    client.set_tag(parent, "flywheel.tuning.best_trial", str(best.number))
    client.set_tag(parent, "flywheel.tuning.best_run_id", str(best.user_attrs.get("mlflow_run_id")))
    plots = _save_plots(study, client, parent)
    summary: dict[str, Any] = {
        "study": study_name,
        "dataset_version": dataset_version,
        "trial": best.number,
        "metric": config.metric,
        "value": best.value,
        "params": best.params,
        "mlflow_parent_run_id": parent,
        "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
        "storage": events.redact(url),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    lake = open_lake(settings.lake_uri)
    body = json.dumps(summary, indent=2).encode()
    lake.write_bytes(best_params_key(dataset_version, study_name), body)
    lake.write_bytes(best_params_key(dataset_version), body)
    client.set_terminated(parent, "FINISHED")
    events.emit("study_finished", study=study_name, best_trial=best.number, counts=counts)
    return StudyReport(
        **summary,
        counts=counts,
        plots=plots,
        best_params_uri=lake.url(best_params_key(dataset_version, study_name)),
    )
