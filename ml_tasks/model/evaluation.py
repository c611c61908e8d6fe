"""Scoring a classifier on a test split: the metrics validate decides on and logs, and the
confusion-matrix figure it attaches to the run."""

from __future__ import annotations

from typing import Any

import numpy as np


def evaluate(probabilities: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    predicted = probabilities.argmax(axis=1)
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted, labels=labels, zero_division=0
    )
    return {
        "accuracy": float((predicted == y).mean()) if len(y) else 0.0,
        "macro_f1": float(f1_score(y, predicted, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y, predicted, labels=labels).tolist(),
    }


def confusion_figure(matrix: list[list[int]], classes: list[str], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(matrix)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), count in np.ndenumerate(cm):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            color="white" if count > cm.max() / 2 else "black",
            fontsize=8,
        )
    fig.tight_layout()
    return fig


def logged_metrics(new: dict[str, Any], incumbent: dict[str, Any] | None) -> dict[str, float]:
    """The metrics validate logs on the trained run: the new model's overall and per-class
    test scores, and the incumbent's overall ones when there is one to compare with."""
    metrics = {"test_accuracy": new["accuracy"], "test_macro_f1": new["macro_f1"]}
    for cls, m in new["per_class"].items():
        metrics |= {
            f"test_f1_class_{cls}": m["f1"],
            f"test_recall_class_{cls}": m["recall"],
            f"test_precision_class_{cls}": m["precision"],
        }
    if incumbent:
        metrics |= {
            "incumbent_test_accuracy": incumbent["accuracy"],
            "incumbent_test_macro_f1": incumbent["macro_f1"],
        }
    return metrics
