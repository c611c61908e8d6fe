"""What the tune step is given: the search space and study settings from ``params.yaml``
(``tune:``), checked before any trial runs; the Optuna storage URL and a lock that makes trial
claims exact across workers; and where the best params of a dataset version live in the lake.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from ml_tasks.core import events
from ml_tasks.core.settings import HYPERPARAMS, Settings, load_params
from ml_tasks.core.step import InfrastructureError, StepError

STORAGE_ENV = "FLYWHEEL_OPTUNA_STORAGE"
# An Airflow Connection handed to the step as an environment variable (URI or JSON), as
# Airflow and Kubernetes Secrets pass connections to processes.
CONNECTION_ENV = "AIRFLOW_CONN_FLYWHEEL_OPTUNA"
PRUNERS = ("median", "hyperband", "none")
PARENT_ATTR = "mlflow_parent_run_id"  # study user attribute: the MLflow parent run


@dataclass(frozen=True)
class TuneConfig:
    space: dict[str, dict[str, Any]]
    metric: str
    direction: Literal["maximize", "minimize"]
    n_trials: int
    epochs: int
    seed: int
    pruner: dict[str, Any]
    heartbeat_interval: int
    grace_period: int


def load_tune_config(settings: Settings) -> TuneConfig:
    """``params.yaml``'s ``tune:`` section, validated: every error names the entry at fault."""
    params = load_params(settings.params_path)
    tune = params.get("tune")
    if not isinstance(tune, dict):
        raise StepError(f"{settings.params_path} has no tune: section")
    space = tune.get("space")
    if not isinstance(space, dict) or not space:
        raise StepError("tune.space must map hyperparameter names to ranges or choices")
    for name, spec in space.items():
        where = f"tune.space.{name}"
        if name not in HYPERPARAMS or name in ("epochs", "seed"):
            known = ", ".join(n for n in HYPERPARAMS if n not in ("epochs", "seed"))
            raise StepError(f"{where}: unknown hyperparameter {name!r} (known: {known})")
        if not isinstance(spec, dict):
            raise StepError(f"{where}: expected {{low, high[, log, step]}} or {{choices}}")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise StepError(f"{where}: choices must be a non-empty list")
            continue
        if "low" not in spec or "high" not in spec:
            raise StepError(f"{where}: needs low and high (or choices)")
        low, high = spec["low"], spec["high"]
        if not isinstance(low, int | float) or not isinstance(high, int | float):
            raise StepError(f"{where}: low and high must be numbers, got {low!r} and {high!r}")
        if low >= high:
            what = "empty" if low == high else "inverted"
            raise StepError(f"{where}: {what} range, low={low} is not below high={high}")
        if spec.get("log") and low <= 0:
            raise StepError(f"{where}: a log-scale range needs low > 0, got {low}")
        if HYPERPARAMS[name] is int and (int(low) != low or int(high) != high):
            raise StepError(f"{where}: {name} is an integer, got low={low} high={high}")
    pruner = dict(tune.get("pruner") or {"name": "median"})
    if pruner.get("name") not in PRUNERS:
        raise StepError(f"tune.pruner.name: {pruner.get('name')!r}, expected one of {PRUNERS}")
    direction = str(tune.get("direction", "maximize"))
    if direction not in ("maximize", "minimize"):
        raise StepError(f"tune.direction: {direction!r}, expected maximize or minimize")
    metric = str(tune.get("metric", "val_accuracy"))
    if metric not in ("val_accuracy", "val_loss", "train_loss"):
        raise StepError(f"tune.metric: {metric!r}, expected val_accuracy, val_loss or train_loss")
    return TuneConfig(
        space=space,
        metric=metric,
        direction=cast(Literal["maximize", "minimize"], direction),
        n_trials=int(tune.get("n_trials", 20)),
        epochs=int(tune.get("epochs", params["train"]["epochs"])),
        seed=int(tune.get("seed", params["train"]["seed"])),
        pruner=pruner,
        heartbeat_interval=int(tune.get("heartbeat_interval", 10)),
        grace_period=int(tune.get("grace_period", 30)),
    )


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sample one value per entry of the (validated) space."""
    values: dict[str, Any] = {}
    for name, spec in space.items():
        if "choices" in spec:
            values[name] = trial.suggest_categorical(name, spec["choices"])
        elif HYPERPARAMS[name] is int:
            values[name] = trial.suggest_int(
                name,
                int(spec["low"]),
                int(spec["high"]),
                step=int(spec.get("step", 1)),
                log=bool(spec.get("log", False)),
            )
        else:
            values[name] = trial.suggest_float(
                name,
                float(spec["low"]),
                float(spec["high"]),
                step=spec.get("step"),
                log=bool(spec.get("log", False)),
            )
    return values


def _from_connection(value: str) -> str:
    """An Airflow Connection (URI or JSON) as a SQLAlchemy URL Optuna can open."""
    if value.lstrip().startswith("{"):
        conn = json.loads(value)
        kind = str(conn.get("conn_type", "postgres"))
        auth = conn.get("login") or ""
        if conn.get("password"):
            auth += f":{conn['password']}"
        port = f":{conn['port']}" if conn.get("port") else ""
        value = f"{kind}://{auth}{'@' if auth else ''}{conn.get('host', '')}{port}/"
        value += str(conn.get("schema") or "")
    for prefix in ("postgres://", "postgresql://"):
        if value.startswith(prefix):
            return "postgresql+psycopg://" + value[len(prefix) :]
    return value


def storage_url(settings: Settings, given: str | None = None) -> str:
    """``--storage``, else ``FLYWHEEL_OPTUNA_STORAGE``, else the Airflow Connection
    ``flywheel_optuna``, else SQLite under the state folder."""
    if given:
        return _from_connection(given)
    if env := os.environ.get(STORAGE_ENV):
        return _from_connection(env)
    if conn := os.environ.get(CONNECTION_ENV):
        return _from_connection(conn)
    return f"sqlite:///{settings.home / 'optuna.db'}"


def open_storage(url: str, config: TuneConfig, failed_trial_callback: Any = None) -> Any:
    """Optuna's RDB storage at ``url`` with heartbeats; unreachable is an error naming it."""
    import optuna
    import sqlalchemy.exc

    shown = events.redact(url)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=config.heartbeat_interval,
            grace_period=config.grace_period,
            failed_trial_callback=failed_trial_callback,
        )
    except sqlalchemy.exc.ArgumentError as exc:
        raise StepError(f"Optuna storage {shown}: not a database URL ({exc})") from exc
    except (sqlalchemy.exc.SQLAlchemyError, ModuleNotFoundError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
        raise InfrastructureError(
            f"the Optuna storage {shown} cannot be reached ({reason}); no trial was run",
            storage=shown,
        ) from exc


@contextmanager
def trial_claim_lock(url: str, study_name: str) -> Iterator[None]:
    """Held while a worker counts the study's trials and asks for a new one, so that workers
    together start exactly the requested number: a PostgreSQL advisory lock, or a file lock
    beside a SQLite database (whose workers share the machine)."""
    if url.startswith("postgresql"):
        import zlib

        import sqlalchemy as sa

        key = zlib.crc32(f"flywheel-tune:{study_name}".encode())
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        engine.dispose()
    elif url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        with open(path.with_name(f".{path.name}.{study_name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
    else:
        raise StepError(f"Optuna storage {events.redact(url)}: use PostgreSQL or SQLite")


def mark_child_failed(study: Any, trial: Any) -> None:
    """Optuna's ``failed_trial_callback``: a trial whose worker stopped sending heartbeats."""
    from mlflow import MlflowClient

    run_id = trial.user_attrs.get("mlflow_run_id")
    reason = f"worker {trial.user_attrs.get('worker', '?')} stopped sending heartbeats"
    events.emit("trial_failed", study=study.study_name, trial=trial.number, error=reason)
    if run_id:
        client = MlflowClient()
        client.set_tag(run_id, "flywheel.tuning.state", "FAIL")
        client.set_tag(run_id, "flywheel.tuning.error", reason)
        client.set_terminated(run_id, "FAILED")


def load_study(config: TuneConfig, url: str, study_name: str) -> Any:
    """The created study, with :func:`mark_child_failed` called on trials of dead workers."""
    import optuna

    storage = open_storage(url, config, failed_trial_callback=mark_child_failed)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as exc:
        raise StepError(f"no study {study_name!r}: run `ml_tasks.tune create` first") from exc


def best_params_key(dataset_version: str, study_name: str | None = None) -> str:
    """Lake key of a study's best params; without a study, the dataset version's latest."""
    return f"tuning/{dataset_version}/{study_name or 'latest'}.json"


def load_best_params(settings: Settings, dataset_version: str) -> dict[str, Any]:
    """The latest best params written for ``dataset_version`` (StepError when none)."""
    from ml_tasks.core.lake import open_lake

    lake = open_lake(settings.lake_uri)
    key = best_params_key(dataset_version)
    if not lake.exists(key):
        raise StepError(
            f"no tuned params for dataset version {dataset_version} ({lake.url(key)}): run "
            f"`python -m ml_tasks.tune run --dataset-version {dataset_version}` first"
        )
    return dict(json.loads(lake.read_bytes(key)))


def tuned_params(settings: Settings, dataset_version: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The latest best params for ``dataset_version`` and the run tags naming their origin."""
    best = load_best_params(settings, dataset_version)
    return dict(best["params"]), {
        "flywheel.tuning.study": str(best["study"]),
        "flywheel.tuning.trial": str(best["trial"]),
        "flywheel.tuning.run_id": str(best.get("mlflow_run_id")),
    }
