"""Tune: an Optuna study of the training function on a prepared dataset version.

``create`` makes the study (RDB storage, see :func:`ml_tasks.model.tuning.storage_url`) and its
MLflow parent run; any number of ``worker`` processes then run trials until the study holds
``--n-trials`` (claimed under a lock, so never more); ``finish`` puts the best params and value
and the plots on the parent run and writes the best params to the lake. ``run`` does all three
in one process. Each trial trains through :func:`ml_tasks.train.fit`, reports every epoch to the
pruner, and is an MLflow child run whose status and ``flywheel.tuning.state`` tag say COMPLETE,
PRUNED or FAIL. A worker that dies stops its trial's heartbeat: the next worker (or ``finish``)
marks that trial and its MLflow run failed.
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time
import warnings
from datetime import UTC, datetime
from typing import Any

from ml_tasks.core import events
from ml_tasks.core.settings import Settings, load_params, load_settings
from ml_tasks.core.step import add_result_option, run_step
from ml_tasks.model.tune_report import finish
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
from ml_tasks.resolve_dataset import resolve_dataset_version

STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def create(
    settings: Settings,
    dataset_version: str,
    study_name: str,
    *,
    storage: str | None = None,
    caller_run_id: str | None = None,
) -> dict[str, Any]:
    """Create the study and its MLflow parent run (both reused when they exist)."""
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
    return {
        "study": study_name,
        "storage": events.redact(url),
        "dataset_version": dataset_version,
        "mlflow_parent_run_id": parent,
    }


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

    from ml_tasks.train import fit

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

        _, history = fit(data, hp, on_epoch=on_epoch, progress=False)
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


def worker(
    settings: Settings,
    study_name: str,
    n_trials: int,
    *,
    storage: str | None = None,
    timeout: float | None = None,
    index: int = 0,
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Run trials until the study holds ``n_trials`` (every state counts) or ``timeout``."""
    import optuna
    import torch

    from ml_tasks.data.prepared import load_prepared
    from ml_tasks.model.tracking import use_mlflow

    config = load_tune_config(settings)
    url = storage_url(settings, storage)
    use_mlflow(settings)
    study = load_study(config, url, study_name)
    study.sampler = optuna.samplers.TPESampler(seed=config.seed + index)
    study.pruner = make_pruner(config)
    data = load_prepared(settings, str(study.user_attrs["dataset_version"]))
    base_hp = dict(load_params(settings.params_path)["train"])
    torch.set_num_threads(threads)
    # Warm up before claiming a trial (imports, MLflow's store), so a trial's time is training.
    from mlflow import MlflowClient

    import ml_tasks.model.classifier  # noqa: F401

    MlflowClient().get_run(str(study.user_attrs[PARENT_ATTR]))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # ask/tell with our own heartbeat thread (a claim must be exact): Optuna warns about both.
    warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    deadline = time.monotonic() + timeout if timeout else None
    states: dict[str, int] = {}
    from tqdm import tqdm

    bar = tqdm(desc=f"tune {study_name}", unit="trial", disable=None if progress else True)
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
    return {"study": study_name, "worker": index, "trials": sum(states.values()), "states": states}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_tasks.tune",
        description="Tune the training hyperparameters with Optuna (space: params.yaml tune:); "
        "every trial is an MLflow child run of the study's run.",
        epilog="Storage: --storage, else FLYWHEEL_OPTUNA_STORAGE, else the Airflow Connection "
        "flywheel_optuna (AIRFLOW_CONN_FLYWHEEL_OPTUNA), else sqlite under the state folder. "
        "Exit codes: 0 done, 2 usage, 3 bad input, 75 a storage or MLflow that did not answer.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        name: sub.add_parser(name, help=text)
        for name, text in (
            ("run", "create, run every trial here, finish (one process)"),
            ("create", "create the study and its MLflow parent run (before starting workers)"),
            ("worker", "run trials of a created study until it holds --n-trials"),
            ("finish", "record the best trial and plots; write the best params to the lake"),
        )
    }
    for name, p in commands.items():
        p.add_argument("--study", required=name in ("worker", "finish"), help="study name")
        p.add_argument("--storage", help="Optuna storage URL (default: see below)")
        if name in ("run", "create"):
            p.add_argument("--dataset-version", help="prepared version (default: the work tree's)")
            p.add_argument("--caller-run-id", help="the orchestrator's run id (lineage tag)")
        if name in ("run", "worker"):
            p.add_argument("--n-trials", type=int, help="trials in the study (default: params)")
            p.add_argument("--timeout", type=float, help="start no trial after this many seconds")
            p.add_argument("--worker-index", type=int, default=0, help="offsets the sampler seed")
            p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
            p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        add_result_option(p)
    args = parser.parse_args(argv)
    if getattr(args, "n_trials", None) is not None and args.n_trials < 1:
        parser.error("--n-trials must be at least 1")
    settings = load_settings()

    def body() -> dict[str, Any]:
        from ml_tasks.model.tracking import call_tracked

        def work() -> dict[str, Any]:
            n_trials = getattr(args, "n_trials", None) or load_tune_config(settings).n_trials
            study = args.study
            if args.command in ("run", "create"):
                version = resolve_dataset_version(args.dataset_version)
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
                study = study or f"{settings.model_name}-{version}-{stamp}"
                created = create(
                    settings, version, study, storage=args.storage, caller_run_id=args.caller_run_id
                )
                if args.command == "create":
                    return created
            if args.command in ("run", "worker"):
                done = worker(
                    settings,
                    study,
                    n_trials,
                    storage=args.storage,
                    timeout=args.timeout,
                    index=args.worker_index,
                    threads=args.threads,
                    progress=not args.no_progress,
                )
                if args.command == "worker":
                    return done
            return finish(settings, study, storage=args.storage)

        return call_tracked(settings, work)

    return run_step(
        f"tune_{args.command}", body, result_path=args.result_path, context={"study": args.study}
    )


if __name__ == "__main__":
    raise SystemExit(main())
