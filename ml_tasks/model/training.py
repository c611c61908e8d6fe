"""Training a digits classifier: the seeded fit and the way a trained model is logged.

The training step, tuning's trials and the small models of tests and benchmarks all fit through
:func:`fit` and log through :func:`log_classifier`, so a model is trained and stored one way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ml_tasks.core.step import StepError
from ml_tasks.data.prepared import PreparedData


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


def model_requirements() -> list[str]:
    """What loading the model needs: the steps environment's versions of these packages."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "numpy", "mlflow")]
