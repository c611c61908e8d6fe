"""Validate: evaluate the new model against the current one and register it only if better.

Both models are scored on the same, current test split. The incumbent is the ``champion``
(serving); while nothing has been approved yet it is the pending ``challenger``, so re-running
the same training never piles up equal versions. The new model is registered (alias
``challenger``, lineage tags) when it passes the absolute floors and beats the incumbent by the
margin, all from ``params.yaml`` (``validate:``); with no incumbent the floors alone decide.
The decision, with both sets of metrics and the reason, is the step's result.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ml_tasks.core import events
from ml_tasks.core.settings import Settings, load_params, load_settings
from ml_tasks.core.step import StepError, add_result_option, run_step
from ml_tasks.model.tracking import call_tracked
from ml_tasks.resolve_dataset import resolve_dataset_version

CHAMPION, CHALLENGER = "champion", "challenger"


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


def decide(
    new: dict[str, Any],
    incumbent: dict[str, Any] | None,
    rules: dict[str, Any],
    force: bool = False,
) -> tuple[bool, str]:
    """Whether to register the new model, and why (one sentence a person can read)."""
    floors = {"accuracy": float(rules["min_accuracy"]), "macro_f1": float(rules["min_macro_f1"])}
    for metric, floor in floors.items():
        if new[metric] < floor:
            return False, f"{metric} {new[metric]:.4f} is below the floor {floor:.4f}"
    if force:
        return True, "registration forced by the caller (floors passed)"
    if incumbent is None:
        return True, "no champion or challenger yet and the floors pass"
    margin = float(rules["min_improvement"])
    gain = new["accuracy"] - incumbent["metrics"]["accuracy"]
    who = f"{incumbent['alias']} v{incumbent['version']}"
    if gain >= margin:
        return (
            True,
            f"accuracy {new['accuracy']:.4f} beats {who} "
            f"({incumbent['metrics']['accuracy']:.4f}) by {gain:+.4f} >= {margin}",
        )
    return False, (
        f"accuracy {new['accuracy']:.4f} does not beat {who} "
        f"({incumbent['metrics']['accuracy']:.4f}) by the margin {margin} (gain {gain:+.4f})"
    )


def find_incumbent(client: Any, name: str) -> tuple[str, Any] | None:
    """The model to beat: the champion, else the pending challenger, else none."""
    from mlflow.exceptions import MlflowException

    from ml_tasks.model.tracking import is_unreachable

    for alias in (CHAMPION, CHALLENGER):
        try:
            return alias, client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if is_unreachable(exc):  # no answer is not "no such alias"
                raise
            continue
    return None


def register(client: Any, settings: Settings, run_id: str, tags: dict[str, str]) -> str:
    """Register the run's model (once: a retry finds the version it made) as ``challenger``."""
    import mlflow

    existing = client.search_model_versions(f"name='{settings.model_name}' and run_id='{run_id}'")
    if existing:
        version = str(existing[0].version)
    else:
        # MLflow 3 keeps the model as a logged model; train records its URI on the run.
        source = client.get_run(run_id).data.tags.get("flywheel.model_uri", f"runs:/{run_id}/model")
        version = str(mlflow.register_model(source, settings.model_name, tags=tags).version)
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, version, key, value)
    client.set_registered_model_alias(settings.model_name, CHALLENGER, version)
    return version


def validate(
    settings: Settings,
    run_id: str,
    dataset_version: str,
    *,
    force: bool = False,
    caller_run_id: str | None = None,
    min_improvement: float | None = None,
    evaluate_only: bool = False,
) -> dict[str, Any]:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    from ml_tasks.data.prepared import load_prepared
    from ml_tasks.model.classifier import load_classifier
    from ml_tasks.model.tracking import lineage_tags, use_mlflow

    rules = load_params(settings.params_path)["validate"]
    if min_improvement is not None:
        rules = {**rules, "min_improvement": min_improvement}
    use_mlflow(settings)
    client = MlflowClient()
    data = load_prepared(settings, dataset_version)
    x_test, y_test = data.part("test")
    if len(x_test) == 0:
        raise StepError(f"dataset version {dataset_version} has no test images")
    new_model = load_classifier(f"runs:/{run_id}/model")
    if new_model.classes != data.classes:
        raise StepError(f"model classes {new_model.classes} differ from the data's {data.classes}")
    new_metrics = evaluate(new_model.predict_proba(x_test), y_test, data.classes)

    incumbent: dict[str, Any] | None = None
    found = find_incumbent(client, settings.model_name)
    if found is not None:
        alias, mv = found
        if mv.run_id == run_id:
            raise StepError(f"run {run_id} is already registered as {alias} v{mv.version}")
        old = load_classifier(f"models:/{settings.model_name}/{mv.version}")
        if old.classes == data.classes and old.image_size == data.x.shape[1]:
            incumbent = {
                "alias": alias,
                "version": str(mv.version),
                "run_id": mv.run_id,
                "metrics": evaluate(old.predict_proba(x_test), y_test, data.classes),
            }
        else:
            events.emit(
                "incumbent_incomparable",
                level="warning",
                model_version=mv.version,
                detail="its classes or image size differ from the current data",
            )

    better, reason = decide(new_metrics, incumbent, rules, force=force)
    # Evaluate only (backfills): the same test and verdict, logged; the registry is not touched.
    should_register = better and not evaluate_only
    if evaluate_only:
        reason = f"evaluation only, nothing registered ({reason})"
    # Logged through the client, not by reopening the run: ``start_run(run_id)`` would mark
    # the trained run RUNNING again, and FAILED (after a full retry budget) on any error here.
    metrics = {"test_accuracy": new_metrics["accuracy"], "test_macro_f1": new_metrics["macro_f1"]}
    for cls, m in new_metrics["per_class"].items():
        metrics |= {
            f"test_f1_class_{cls}": m["f1"],
            f"test_recall_class_{cls}": m["recall"],
            f"test_precision_class_{cls}": m["precision"],
        }
    if incumbent:
        metrics |= {
            "incumbent_test_accuracy": incumbent["metrics"]["accuracy"],
            "incumbent_test_macro_f1": incumbent["metrics"]["macro_f1"],
        }
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
        tags=[
            RunTag("flywheel.decision", "register" if better else "skip"),
            RunTag("flywheel.evaluate_only", str(evaluate_only).lower()),
            RunTag("flywheel.decision_reason", reason),
        ],
    )
    import matplotlib.pyplot as plt

    fig = confusion_figure(
        new_metrics["confusion_matrix"],
        data.classes,
        f"test split, accuracy {new_metrics['accuracy']:.3f}",
    )
    client.log_figure(run_id, fig, "confusion_matrix.png")
    plt.close(fig)
    client.log_dict(run_id, new_metrics, "test_metrics.json")

    version = None
    if should_register:
        run = client.get_run(run_id)
        tags = {
            k: str(v) for k, v in lineage_tags(settings, dataset_version, caller_run_id).items()
        }
        tags.update(
            {
                "flywheel.params": json.dumps({k: v for k, v in run.data.params.items()}),
                "flywheel.data_checks": run.data.tags.get("flywheel.data_checks", "unknown"),
                "flywheel.test_accuracy": f"{new_metrics['accuracy']:.4f}",
                "flywheel.test_macro_f1": f"{new_metrics['macro_f1']:.4f}",
                "flywheel.decision_reason": reason,
            }
        )
        # Tuned params: the study and trial they came from (set by train --use-best-params).
        tags.update({k: v for k, v in run.data.tags.items() if k.startswith("flywheel.tuning.")})
        version = register(client, settings, run_id, tags)
        events.emit(
            "alias_moved",
            model_version=version,
            alias=CHALLENGER,
            mlflow_run_id=run_id,
            dataset_version=dataset_version,
            who="validate",
        )
    events.emit(
        "registration_decided",
        decision="register" if better else "skip",
        evaluate_only=evaluate_only,
        reason=reason,
        mlflow_run_id=run_id,
        dataset_version=dataset_version,
        model_version=version,
        accuracy=round(new_metrics["accuracy"], 4),
        incumbent_version=incumbent["version"] if incumbent else None,
    )
    summary = {k: new_metrics[k] for k in ("accuracy", "macro_f1")}
    return {
        "decision": "register" if better else "skip",
        "registered": should_register,
        "evaluate_only": evaluate_only,
        "reason": reason,
        "model_name": settings.model_name,
        "model_version": version,
        "mlflow_run_id": run_id,
        "dataset_version": dataset_version,
        "new": summary,
        "incumbent": (
            {k: incumbent[k] for k in ("alias", "version", "run_id")}
            | {m: incumbent["metrics"][m] for m in ("accuracy", "macro_f1")}
            if incumbent
            else None
        ),
    }


def read_train_result(train_result: Path) -> tuple[str, str | None]:
    """The MLflow run id and dataset version a train step's JSON result names."""
    try:
        result = json.loads(train_result.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StepError(
            f"cannot read {train_result} (the train step's --result-path): {exc}"
        ) from exc
    if not isinstance(result, dict) or result.get("status", "ok") != "ok":
        error = result.get("error") if isinstance(result, dict) else None
        raise StepError(f"{train_result} is not a finished training: {error or result!r}")
    if not result.get("mlflow_run_id"):
        raise StepError(f"{train_result} names no mlflow_run_id: is it the train step's result?")
    version = result.get("dataset_version")
    return str(result["mlflow_run_id"]), str(version) if version else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_tasks.validate",
        description="Evaluate a trained run against the champion on the test split; register it "
        "as challenger only if it is better.",
        epilog="Exit codes: 0 done (registered or not: see the result's decision), 2 usage, 3 bad "
        "input (do not retry), 75 the MLflow tracking server did not answer (retry later; "
        "`python -m ml_tasks.train --help` states how long MLflow retries).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-id", help="the MLflow run of the trained model")
    source.add_argument(
        "--train-result",
        type=Path,
        help="the train step's JSON result (holds the run id and the dataset version)",
    )
    parser.add_argument(
        "--dataset-version",
        help="the prepared version to test on (default: the one --train-result names, else the "
        "one data/images.dvc records in the work tree)",
    )
    parser.add_argument(
        "--force-register",
        action="store_true",
        help="register when the floors pass even if it does not beat the incumbent",
    )
    parser.add_argument("--caller-run-id", help="the orchestrator's run id, kept as a lineage tag")
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="test and decide as usual, but register nothing (backfills: history, not releases)",
    )
    parser.add_argument(
        "--min-improvement",
        type=float,
        help="accuracy gain needed over the incumbent (default: params.yaml)",
    )
    add_result_option(parser)
    args = parser.parse_args(argv)
    settings = load_settings()

    def body() -> dict[str, Any]:
        run_id, trained_on = args.run_id, None
        if args.train_result is not None:
            run_id, trained_on = read_train_result(args.train_result)
        return validate(
            settings,
            run_id,
            resolve_dataset_version(args.dataset_version or trained_on),
            force=args.force_register,
            caller_run_id=args.caller_run_id,
            min_improvement=args.min_improvement,
            evaluate_only=args.evaluate_only,
        )

    return run_step(
        "validate",
        lambda: call_tracked(settings, body),
        result_path=args.result_path,
        context={"dataset_version": args.dataset_version, "mlflow_run_id": args.run_id},
    )


if __name__ == "__main__":
    raise SystemExit(main())
