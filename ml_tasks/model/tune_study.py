"""A study before its report: created once with its MLflow parent run, then filled with trials
by any number of workers.

A worker claims each trial under :func:`~ml_tasks.model.tuning.trial_claim_lock`, so the study
never holds more than ``n_trials``, and keeps the trial's heartbeat while it trains: a worker
that dies stops beating, and the next worker (or the report) marks its trial failed. Each trial
is an MLflow child run whose status and ``flywheel.tuning.state`` tag say COMPLETE, PRUNED or
FAIL. Trials train with :func:`ml_tasks.model.training.fit`, the function the train step uses.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

from ml_tasks.core import events
from ml_tasks.core.settings import Settings, load_params
from ml_tasks.model.tuning import (
    PARENT_ATTR,
    TuneConfig,
    load_study,
    load_tune_config,
    open_storage,
    storage_url,
    suggest,
    trial_claim_lock,
)

STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


@dataclass(frozen=True)
class StudyCreated:
    """The study workers join, and the MLflow run its trials are children of."""

    study: str
    storage: str  # the URL with its password hidden
    dataset_version: str
    mlflow_parent_run_id: str


def create(
    settings: Settings,
    dataset_version: str,
    study_name: str,
    storage: str | None,
    caller_run_id: str | None,
) -> StudyCreated:
    """Create the study and its MLflow parent run (both reused when they exist).

    ``storage``: an Optuna storage URL (None: the configured one); ``caller_run_id``: the
    orchestrator's run, a lineage tag.
    """
    import optuna
    from mlflow import MlflowClient

    from ml_tasks.data.prepared import load_prepared
    from ml_tasks.model.tracking import lineage_tags, use_mlflow

    config = load_tune_config(settings)
    url = storage_url(settings, storage)
    load_prepared(settings, dataset_version)  # refuse a version that is not prepared, now
    store = open_storage(url, config)
    experiment_id = use_mlflow(settings)
    with trial_claim_lock(url, study_name):
        study = optuna.create_study(
            storage=store, study_name=study_name, direction=config.direction, load_if_exists=True
        )
        parent = study.user_attrs.get(PARENT_ATTR)
        if parent is None:
            tags = {
                **lineage_tags(settings, dataset_version, caller_run_id),
                "flywheel.kind": "tuning",
                "flywheel.tuning.study": study_name,
                "flywheel.tuning.storage": events.redact(url),
            }
            client = MlflowClient()
            parent = client.create_run(experiment_id, run_name=study_name, tags=tags).info.run_id
            client.log_dict(parent, {"space": config.space, "pruner": config.pruner}, "space.json")
            for key, value in (
                ("metric", config.metric),
                ("direction", config.direction),
                ("epochs", config.epochs),
                ("seed", config.seed),
                ("pruner", config.pruner["name"]),
            ):
                client.log_param(parent, key, value)
            study.set_user_attr(PARENT_ATTR, parent)
            study.set_user_attr("dataset_version", dataset_version)
    events.emit("study_created", study=study_name, mlflow_parent_run_id=parent)
    return StudyCreated(study_name, events.redact(url), dataset_version, str(parent))


class Heartbeat(threading.Thread):
    """Records the running trial's heartbeat every ``interval`` seconds until stopped."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.storage.record_heartbeat(self.trial_id)


def make_pruner(config: TuneConfig) -> Any:
    import optuna

    spec = config.pruner
    if spec["name"] == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=int(spec.get("min_resource", 1)),
            max_resource=config.epochs,
            reduction_factor=int(spec.get("reduction_factor", 3)),
        )
    if spec["name"] == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(spec.get("n_startup_trials", 3)),
            n_warmup_steps=int(spec.get("n_warmup_steps", 1)),
        )
    return optuna.pruners.NopPruner()


def run_trial(
    study: Any, trial: Any, data: Any, base_hp: dict[str, Any], config: TuneConfig
) -> str:
    """Train one trial and tell the study how it ended; returns COMPLETE, PRUNED or FAIL."""
    import optuna
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from ml_tasks.model import training

    client = MlflowClient()
    parent = study.user_attrs[PARENT_ATTR]
    child = client.create_run(
        client.get_run(parent).info.experiment_id,
        run_name=f"{study.study_name} trial {trial.number}",
        tags={
            "mlflow.parentRunId": parent,
            "flywheel.tuning.study": study.study_name,
            "flywheel.tuning.trial": str(trial.number),
            "flywheel.dataset_version": str(study.user_attrs.get("dataset_version")),
        },
    ).info.run_id
    trial.set_user_attr("mlflow_run_id", child)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    state, error = "FAIL", ""
    try:
        hp = {**base_hp, **suggest(trial, config.space), "epochs": config.epochs}
        client.log_batch(child, params=[Param(k, str(v)) for k, v in hp.items()])

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            now = int(time.time() * 1000)
            client.log_batch(child, metrics=[Metric(k, v, now, epoch) for k, v in metrics.items()])
            trial.report(metrics[config.metric], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: {config.metric}={metrics[config.metric]}")

        _, history = training.fit(data, hp, on_epoch=on_epoch, progress=False)
        value = history[-1][config.metric]
        study.tell(trial, value)
        state = "COMPLETE"
    except optuna.TrialPruned as exc:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        state, error = "PRUNED", str(exc)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"[:1000]
        trial.set_user_attr("error", error)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if not isinstance(exc, Exception):
            client.set_tag(child, "flywheel.tuning.state", "FAIL")
            client.set_terminated(child, "FAILED")
            raise
    client.set_tag(child, "flywheel.tuning.state", state)
    if error:
        client.set_tag(
            child, "flywheel.tuning.error" if state == "FAIL" else "flywheel.tuning.pruned", error
        )
    client.set_terminated(child, STATUS[state])
    events.emit(
        "trial_finished",
        study=study.study_name,
        trial=trial.number,
        state=state,
        error=error or None,
    )
    return state


@dataclass(frozen=True)
class WorkerOptions:
    """How one worker runs: its stopping time, sampler seed offset, torch threads, progress bar."""

    timeout: float | None = None  # start no trial after this many seconds
    index: int = 0
    threads: int = 1
    progress: bool = True


@dataclass(frozen=True)
class WorkerDone:
    """The trials this worker ran, by how they ended."""

    study: str
    worker: int
    trials: int
    states: dict[str, int]


def work(
    settings: Settings,
    study_name: str,
    n_trials: int | None,
    storage: str | None = None,
    options: WorkerOptions = WorkerOptions(),
) -> WorkerDone:
    """Run trials until the study holds ``n_trials`` (None: the configured number; every state
    counts) or the timeout."""
    import optuna
    import torch

    from ml_tasks.data.prepared import load_prepared
    from ml_tasks.model.tracking import use_mlflow

    config = load_tune_config(settings)
    n_trials = n_trials or config.n_trials
    url = storage_url(settings, storage)
    use_mlflow(settings)
    study = load_study(config, url, study_name)
    study.sampler = optuna.samplers.TPESampler(seed=config.seed + options.index)
    study.pruner = make_pruner(config)
    data = load_prepared(settings, str(study.user_attrs["dataset_version"]))
    base_hp = dict(load_params(settings.params_path)["train"])
    torch.set_num_threads(options.threads)
    # Warm up before claiming a trial (imports, MLflow's store), so a trial's time is training.
    from mlflow import MlflowClient

    import ml_tasks.model.classifier  # noqa: F401

    MlflowClient().get_run(str(study.user_attrs[PARENT_ATTR]))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # ask/tell with our own heartbeat thread (a claim must be exact): Optuna warns about both.
    warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    deadline = time.monotonic() + options.timeout if options.timeout else None
    states: dict[str, int] = {}
    from tqdm import tqdm

    bar = tqdm(desc=f"tune {study_name}", unit="trial", disable=None if options.progress else True)
    while deadline is None or time.monotonic() < deadline:
        optuna.storages.fail_stale_trials(study)
        with trial_claim_lock(url, study_name):
            if len(study.get_trials(deepcopy=False)) >= n_trials:
                break
            trial = study.ask()
            study._storage.record_heartbeat(trial._trial_id)
        beat = Heartbeat(study._storage, trial._trial_id, config.heartbeat_interval)
        beat.start()
        try:
            state = run_trial(study, trial, data, base_hp, config)
        finally:
            beat.stopped.set()
        states[state] = states.get(state, 0) + 1
        bar.update(1)
        bar.set_postfix(states)
    bar.close()
    return WorkerDone(study_name, options.index, sum(states.values()), states)
