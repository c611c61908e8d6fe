"""The image classifier: a small CNN, and one loader every consumer of a model uses.

Validation, the model service and pre-annotation all load a registered model through
:func:`load_classifier`, which reads the class names and image size stored with the model
(MLflow model metadata), so no consumer hard-codes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Two conv blocks and a small head; input ``(N, 1, H, W)`` in [0, 1], output logits."""

    def __init__(self, num_classes: int, channels: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels * 2, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * 2 * 16, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


@dataclass
class Classifier:
    """A loaded model with what it needs to be used: its classes and input size."""

    module: nn.Module
    classes: list[str]
    image_size: int
    uri: str
    version: str | None = None

    def predict_proba(self, pixels: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities for ``(N, H, W)`` images scaled to [0, 1]."""
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(pixels), batch_size):
                batch = torch.from_numpy(
                    np.ascontiguousarray(pixels[start : start + batch_size], dtype=np.float32)
                ).unsqueeze(1)
                outputs.append(torch.softmax(self.module(batch), dim=1).numpy())
        if not outputs:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(outputs)


def load_classifier(model_uri: str) -> Classifier:
    """Load ``models:/name@alias``, ``models:/name/version`` or ``runs:/id/model``."""
    import mlflow
    import mlflow.pytorch

    info = mlflow.models.get_model_info(model_uri)
    metadata: dict[str, Any] = info.metadata or {}
    module = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    module.eval()
    version = None
    if model_uri.startswith("models:/"):
        version = str(resolve_model_version(model_uri))
    return Classifier(
        module=module,
        classes=[str(c) for c in metadata["classes"]],
        image_size=int(metadata["image_size"]),
        uri=model_uri,
        version=version,
    )


def resolve_model_version(model_uri: str) -> str:
    """The registry version a ``models:/`` URI points at (alias or number)."""
    from mlflow import MlflowClient

    name, _, ref = model_uri.removeprefix("models:/").partition("@")
    client = MlflowClient()
    if ref:
        return str(client.get_model_version_by_alias(name, ref).version)
    name, _, number = model_uri.removeprefix("models:/").partition("/")
    return number
