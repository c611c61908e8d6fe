"""A small digits champion in an MLflow store of its own: what the serving benchmark and the
model-service tests serve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_tasks.data.prepared import PreparedData


@dataclass(frozen=True)
class DigitsChampion:
    tracking_uri: str
    version: str
    data: PreparedData
    pixels: np.ndarray
    """uint8 (N, 8, 8) digits, in the order of ``data`` (``data.split`` says which are test)."""


def register_digits(
    store: Path, model_name: str, experiment: str, *, epochs: int, channels: int, hidden: int
) -> DigitsChampion:
    """Fit a small CNN on scikit-learn's digits (seeded) and register it as
    ``<model_name>@champion`` in a SQLite MLflow store under ``store`` (artifacts in
    ``store/art``); MLflow's tracking and registry URIs point at that store afterwards."""
    import mlflow

    from ml_tasks.train import digits_data, fit_and_register

    data, pixels = digits_data()
    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment_id = mlflow.create_experiment(experiment, artifact_location=(store / "art").as_uri())
    hp = {"batch_size": 64, "learning_rate": 0.01, "weight_decay": 0.0, "seed": 0}
    version, _ = fit_and_register(
        data,
        {**hp, "epochs": epochs, "channels": channels, "hidden": hidden},
        model_name,
        experiment_id=experiment_id,
    )
    return DigitsChampion(tracking_uri, version, data, pixels)
