"""``python -m ml_tasks.pipelines``: compile, run locally, submit to Kubeflow, read a result."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def training_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline's parameters from the command line (unset ones keep their defaults)."""
    out: dict[str, Any] = {}
    for name in ("dataset_version", "epochs", "learning_rate", "min_improvement"):
        if getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    if getattr(args, "force_register", False):
        out["force_register"] = True
    return out


def add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-version", help="default: the work tree's (data/images.dvc)")
    parser.add_argument("--epochs", type=int, help="default: params.yaml")
    parser.add_argument("--learning-rate", type=float, help="default: params.yaml")
    parser.add_argument("--min-improvement", type=float, help="default: params.yaml")
    parser.add_argument("--force-register", action="store_true")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml_tasks.pipelines", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    comp = sub.add_parser("compile", help="compile the training pipeline to IR YAML")
    comp.add_argument(
        "--out", type=Path, help="default: <FLYWHEEL_HOME>/pipelines/<pipeline name>.yaml"
    )
    comp.add_argument("--step", help="compile the one-step pipeline of this step instead")
    loc = sub.add_parser("local", help="run the training pipeline here with kfp.local")
    add_training_options(loc)
    from ml_tasks.pipelines.submit import add_submit_parsers

    add_submit_parsers(sub, add_training_options)
    argv = sys.argv[1:] if argv is None else argv
    # ``submit-step STEP [options] -- ARGS``: what follows ``--`` is the step's own.
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.arguments = argv[split + 1 :]
    if args.command == "compile":
        from ml_tasks.core.settings import load_settings
        from ml_tasks.pipelines.pipeline import compile_pipeline, step_pipeline, training_pipeline

        func = step_pipeline(args.step) if args.step else training_pipeline()
        name = f"flywheel-step-{args.step}" if args.step else "flywheel-training"
        out = args.out or load_settings().home / "pipelines" / f"{name}.yaml"
        print(compile_pipeline(func, out))
        return 0
    if args.command == "local":
        from ml_tasks.pipelines.local import LocalRunFailed, run_training_locally

        try:
            result = run_training_locally(training_arguments(args))
        except LocalRunFailed as exc:
            print(f"error: the pipeline failed: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(result, default=str))
        return 0
    from ml_tasks.pipelines.submit import run_submit_command

    return run_submit_command(args, training_arguments(args))


if __name__ == "__main__":
    raise SystemExit(main())
