"""Train: fit the CNN on a prepared dataset version and log everything to MLflow.

Hyperparameters come from ``params.yaml`` (``train:``) and can be overridden on the command
line. Training is seeded, so the same data and params give the same model. The MLflow run
holds the params, per-epoch metrics, the data-check report and the model (with signature,
input example, class names and image size), tagged with its lineage: dataset version, code
revision and the calling orchestrator run.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from ml_tasks.core import events
from ml_tasks.core.lake import open_lake
from ml_tasks.core.settings import HYPERPARAMS, Settings, load_params, load_settings
from ml_tasks.core.step import StepError, add_result_option, run_step
from ml_tasks.data.prepared import PreparedData, load_prepared
from ml_tasks.resolve_dataset import resolve_dataset_version


def fit(
    data: PreparedData,
    hp: dict[str, Any],
    *,
    on_epoch: Any = None,
    progress: bool = True,
) -> tuple[Any, list[dict[str, float]]]:
    """Train a fresh model; calls ``on_epoch(epoch, metrics)`` after each epoch."""
    import torch
    from torch import nn

    from ml_tasks.model.classifier import DigitsCNN

    torch.manual_seed(int(hp["seed"]))
    x_train, y_train = data.part("train")
    x_val, y_val = data.part("val")
    if len(x_train) == 0 or len(x_val) == 0:
        raise StepError(f"need train and val images, got {len(x_train)} train / {len(x_val)} val")
    model = DigitsCNN(len(data.classes), channels=int(hp["channels"]), hidden=int(hp["hidden"]))
    optimizer = torch.optim.Adam(
        model.parameters(), lr=float(hp["learning_rate"]), weight_decay=float(hp["weight_decay"])
    )
    loss_fn = nn.CrossEntropyLoss()
    xt = torch.from_numpy(x_train).unsqueeze(1)
    yt = torch.from_numpy(y_train)
    xv = torch.from_numpy(x_val).unsqueeze(1)
    yv = torch.from_numpy(y_val)
    generator = torch.Generator().manual_seed(int(hp["seed"]))
    history: list[dict[str, float]] = []
    epochs = range(int(hp["epochs"]))
    if progress:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc="train", unit="epoch", disable=None)  # off when not a TTY
    for epoch in epochs:
        model.train()
        order = torch.randperm(len(xt), generator=generator)
        total = 0.0
        for start in range(0, len(order), int(hp["batch_size"])):
            idx = order[start : start + int(hp["batch_size"])]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        model.eval()
        with torch.inference_mode():
            logits = model(xv)
            val_loss = float(loss_fn(logits, yv))
            val_accuracy = float((logits.argmax(1) == yv).float().mean())
        metrics = {
            "train_loss": total / len(xt),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
        }
        history.append(metrics)
        if progress:
            epochs.set_postfix(loss=f"{metrics['train_loss']:.3f}", val_acc=f"{val_accuracy:.3f}")  # type: ignore[attr-defined]
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return model, history


def train(
    settings: Settings,
    dataset_version: str,
    overrides: dict[str, Any],
    *,
    caller_run_id: str | None = None,
    logical_date: str | None = None,
    progress: bool = True,
    use_best_params: bool = False,
) -> dict[str, Any]:
    """Train and log one run; ``use_best_params`` starts from the dataset version's latest
    tuned params (``ml_tasks.tune``) and tags the run with their study and trial."""
    import mlflow
    import mlflow.pytorch

    from ml_tasks.model.tracking import (
        TrackingUnavailable,
        close_run_after_failure,
        fail_abandoned_runs,
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
) -> dict[str, Any]:
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
    return {
        "mlflow_run_id": run_id,
        "model_uri": f"runs:/{run_id}/model",
        "logged_model_uri": info.model_uri,
        "dataset_version": dataset_version,
        "params": hp,
        "val_accuracy": final["val_accuracy"],
        "val_loss": final["val_loss"],
    }


def log_classifier(model: Any, data: PreparedData, registered_model_name: str | None = None) -> Any:
    """Log a trained model to the active MLflow run the way every consumer loads it back.

    Pickle format (a plain module; MLflow's default pt2 export cannot ``.eval()``), the class
    names and image size as model metadata (read by
    ``ml_tasks.model.classifier.load_classifier``), a signature and an input example. Returns
    MLflow's ``ModelInfo``.
    """
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    model.eval()
    example = data.part("val")[0][:5][:, None, :, :].astype(np.float32)
    with torch.inference_mode():
        signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
    return mlflow.pytorch.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example,
        serialization_format="pickle",
        metadata={"classes": data.classes, "image_size": int(data.x.shape[1])},
        # Named, not inferred: inference runs the model in a subprocess to capture its
        # imports, which costs seconds per run and guesses no better than this list.
        pip_requirements=model_requirements(),
        registered_model_name=registered_model_name,
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
    for tests, benchmarks and notebooks to put a known model in a registry. Uses MLflow's
    current tracking and registry URIs.
    """
    import mlflow

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


def model_requirements() -> list[str]:
    """What loading the model needs: the steps environment's versions of these packages."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "numpy", "mlflow")]


def add_hyperparameter_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hyperparameters (default: params.yaml train:)")
    for name, kind in HYPERPARAMS.items():
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None)


def main(argv: list[str] | None = None) -> int:
    from ml_tasks.model.tracking import RetryBudget

    parser = argparse.ArgumentParser(
        prog="python -m ml_tasks.train",
        description="Train the CNN on a prepared dataset version; log the run and model to MLflow.",
        epilog="Exit codes: 0 done, 2 usage, 3 bad input (do not retry), 75 the MLflow tracking "
        f"server did not answer (retry later). MLflow retries each request: "
        f"{RetryBudget.from_env().describe()}; set those variables to change it.",
    )
    parser.add_argument(
        "--dataset-version", help="the prepared version to train on (default: the work tree's)"
    )
    parser.add_argument("--caller-run-id", help="the orchestrator's run id, kept as a lineage tag")
    parser.add_argument("--logical-date", help="the data interval this run stands for (backfills)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--use-best-params",
        action="store_true",
        help="start from the dataset version's latest tuned params (python -m ml_tasks.tune); "
        "options given here still win",
    )
    add_hyperparameter_options(parser)
    add_result_option(parser)
    args = parser.parse_args(argv)
    overrides = {name: getattr(args, name) for name in HYPERPARAMS}
    for name in ("epochs", "batch_size", "channels", "hidden"):
        if overrides[name] is not None and overrides[name] < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if overrides["learning_rate"] is not None and overrides["learning_rate"] <= 0:
        parser.error("--learning-rate must be positive")
    from ml_tasks.model.tracking import call_tracked

    settings = load_settings()
    return run_step(
        "train",
        lambda: call_tracked(
            settings,
            lambda: train(
                settings,
                resolve_dataset_version(args.dataset_version),
                overrides,
                caller_run_id=args.caller_run_id,
                logical_date=args.logical_date,
                progress=not args.no_progress,
                use_best_params=args.use_best_params,
            ),
        ),
        result_path=args.result_path,
        context={"dataset_version": args.dataset_version},
    )


if __name__ == "__main__":
    raise SystemExit(main())
