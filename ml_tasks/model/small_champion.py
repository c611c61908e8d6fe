"""A small digits classifier, trained and registered the way the steps do it, for tests and
benchmarks that need a known model in an MLflow registry (usually as ``champion``).

:func:`register_small_model` is the one way to make such a model: it fits through
:func:`ml_tasks.model.training.fit` and logs through
:func:`ml_tasks.model.training.log_classifier`, so what tests serve is what training produces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml_tasks.data.prepared import PreparedData

# Small and fast: seconds on a CPU, and accurate enough on separable data to be a champion.
SMALL_HYPERPARAMS: dict[str, Any] = {
    "batch_size": 64,
    "learning_rate": 0.01,
    "weight_decay": 0.0,
    "seed": 0,
}


def register_small_model(
    data: PreparedData,
    model_name: str,
    *,
    epochs: int = 3,
    channels: int = 4,
    hidden: int = 16,
    alias: str = "champion",
    experiment_id: str | None = None,
) -> tuple[str, list[dict[str, float]]]:
    """Fit a small CNN on ``data``, register it as ``model_name`` and point ``alias`` at it;
    returns (version, per-epoch history)."""
    hp = {**SMALL_HYPERPARAMS, "epochs": epochs, "channels": channels, "hidden": hidden}
    return fit_and_register(data, hp, model_name, alias=alias, experiment_id=experiment_id)


def holdout_every_seventh(images: np.ndarray, labels: np.ndarray) -> PreparedData:
    """Images in [0, 1] with digit labels as training data; every seventh image is held out
    for validation, so each of the ten classes is in both parts."""
    split = np.where(np.arange(len(labels)) % 7 == 0, "val", "train")
    return PreparedData(
        images.astype(np.float32), labels.astype(np.int64), split, [str(c) for c in range(10)]
    )


def fit_and_register(
    data: PreparedData,
    hp: dict[str, Any],
    model_name: str,
    *,
    alias: str = "champion",
    experiment_id: str | None = None,
) -> tuple[str, list[dict[str, float]]]:
    """Fit, log and register a classifier and point ``alias`` at it; (version, history).

    Not the training step (that one reads a prepared version and tags lineage): the short way
    for tests, benchmarks and notebooks to put a known model in a registry, through the same
    fit and logging. Uses MLflow's current tracking and registry URIs.
    """
    import mlflow

    from ml_tasks.model.training import fit, log_classifier

    model, history = fit(data, hp, progress=False)
    with mlflow.start_run(experiment_id=experiment_id):
        info = log_classifier(model, data, registered_model_name=model_name)
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(model_name, alias, version)
    return version, history


def digits_data(seed: int = 0) -> tuple[PreparedData, np.ndarray]:
    """scikit-learn's bundled digits with a seeded 70/15/15 split, and their ``uint8`` pixels.

    Pixels are scaled to 0-255 the way ``ml_tasks.dataset`` writes the digits as PNG files.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images / 16.0 * 255.0).astype(np.uint8)
    split = np.random.default_rng(seed).choice(
        np.array(["train", "val", "test"]), size=len(pixels), p=[0.7, 0.15, 0.15]
    )
    data = PreparedData(
        (pixels / 255.0).astype(np.float32),
        digits.target.astype(np.int64),
        split,
        [str(c) for c in range(10)],
    )
    return data, pixels


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

    data, pixels = digits_data()
    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment_id = mlflow.create_experiment(experiment, artifact_location=(store / "art").as_uri())
    version, _ = register_small_model(
        data,
        model_name,
        epochs=epochs,
        channels=channels,
        hidden=hidden,
        experiment_id=experiment_id,
    )
    return DigitsChampion(tracking_uri, version, data, pixels)
