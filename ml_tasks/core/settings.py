"""Resolved settings, shared by the steps and the Airflow side.

Everything is read lazily from the environment and ``params.yaml`` when asked for, never at
import time, so DAG parsing and ``--help`` stay cheap and tests can move the state folder
with one environment variable. ``python -m ml_tasks.config`` prints what a step would use.

Environment variables (all optional):

- ``FLYWHEEL_HOME``: the embedded state folder (default ``<repo>/.flywheel``).
- ``FLYWHEEL_REPO``: the repository root (default: the checkout this package lives in).
- ``FLYWHEEL_LAKE_URI``: ``file://...`` or ``s3://bucket[/prefix]`` (default ``<home>/lake``).
- ``MLFLOW_TRACKING_URI``: default ``sqlite:///<home>/mlflow.db``.
- ``FLYWHEEL_MODEL_NAME``, ``FLYWHEEL_EXPERIMENT``: registry and experiment names.
- ``FLYWHEEL_BACKEND``: ``local``, ``kubernetes`` or ``kubeflow``.
- ``FLYWHEEL_DVC_REMOTE``: the DVC remote to push to and pull from (default ``local``).
- ``FLYWHEEL_LOG_PATH``: the JSON-lines event log (default ``<home>/logs/events.jsonl``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

BACKENDS = ("local", "kubernetes", "kubeflow")


class ConfigError(ValueError):
    """A setting has a value Flywheel cannot use."""


def _package_repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def repo_root() -> Path:
    """The repository checkout: ``FLYWHEEL_REPO``, else the one this package lives in, else cwd."""
    if env := os.environ.get("FLYWHEEL_REPO"):
        return Path(env).resolve()
    candidate = _package_repo_root()
    if (candidate / "params.yaml").exists():
        return candidate
    return Path.cwd()


@dataclass(frozen=True)
class Settings:
    """Where Flywheel keeps things and whom it talks to."""

    repo: Path
    home: Path
    lake_uri: str
    tracking_uri: str
    artifact_uri: str
    model_name: str
    experiment: str
    backend: str
    dvc_remote: str
    log_path: Path
    params_path: Path

    @property
    def data_dir(self) -> Path:
        """The DVC-tracked dataset: ``data/images/<class>/<content hash>.png``."""
        return self.repo / "data" / "images"

    @property
    def tracking_is_local(self) -> bool:
        """True when MLflow runs embedded (no server), so Flywheel picks the artifact root."""
        return self.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in self.tracking_uri

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) for k, v in asdict(self).items()}


def load_settings() -> Settings:
    """Resolve the settings from the environment; cheap, so call it where needed."""
    repo = repo_root()
    home = Path(os.environ.get("FLYWHEEL_HOME") or repo / ".flywheel").resolve()
    backend = os.environ.get("FLYWHEEL_BACKEND", "local")
    if backend not in BACKENDS:
        raise ConfigError(f"FLYWHEEL_BACKEND={backend!r}: expected one of {', '.join(BACKENDS)}")
    return Settings(
        repo=repo,
        home=home,
        lake_uri=os.environ.get("FLYWHEEL_LAKE_URI") or (home / "lake").as_uri(),
        tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
        artifact_uri=os.environ.get("FLYWHEEL_ARTIFACT_URI") or (home / "mlartifacts").as_uri(),
        model_name=os.environ.get("FLYWHEEL_MODEL_NAME", "digits"),
        experiment=os.environ.get("FLYWHEEL_EXPERIMENT", "flywheel"),
        backend=backend,
        dvc_remote=os.environ.get("FLYWHEEL_DVC_REMOTE", "local"),
        log_path=Path(os.environ.get("FLYWHEEL_LOG_PATH") or home / "logs" / "events.jsonl"),
        params_path=Path(os.environ.get("FLYWHEEL_PARAMS") or repo / "params.yaml"),
    )


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` through libyaml when PyYAML has it: the same answers, a few times
    faster (every step reads ``params.yaml``, prepare also ``data/images.dvc``)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_params(path: Path | None = None) -> dict[str, Any]:
    """``params.yaml`` as a dict, grouped by stage (``prepare``, ``train``, ``validate``...)."""
    params_path = path or load_settings().params_path
    try:
        loaded = safe_yaml(params_path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"no params file at {params_path}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{params_path} must hold a mapping of stage names to params")
    return loaded


# The training function's hyperparameters (``params.yaml``'s ``train:``) and their types: what
# ``train`` accepts on its command line and what a ``tune:`` search space may name.
HYPERPARAMS: dict[str, type] = {
    "epochs": int,
    "batch_size": int,
    "learning_rate": float,
    "weight_decay": float,
    "channels": int,
    "hidden": int,
    "seed": int,
}
