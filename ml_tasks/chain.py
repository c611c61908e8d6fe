"""The step chain without an orchestrator: materialize, prepare, checks, train, validate.

Runs each step as the same command a DAG task or a pod runs (a subprocess of this
interpreter, reading the previous step's JSON result), so it is both a quick way to try the
loop and the baseline the orchestration-overhead benchmark compares Airflow against.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


class ChainError(RuntimeError):
    """A step of the chain failed; its own message was already printed."""


def run(step: str, *args: str, workdir: Path) -> dict[str, Any]:
    """Run ``python -m ml_tasks.<step> ARGS --result-path ...`` and return its result."""
    result_path = workdir / f"{step}.json"
    command = [sys.executable, "-m", f"ml_tasks.{step}", *args, "--result-path", str(result_path)]
    done = subprocess.run(command)
    if done.returncode != 0:
        raise ChainError(f"step {step} failed (exit {done.returncode})")
    loaded: dict[str, Any] = json.loads(result_path.read_text())
    return loaded


def run_chain(
    *, force_register: bool = False, extra_train_args: list[str] | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flywheel-chain-") as tmp:
        workdir = Path(tmp)
        done = subprocess.run(
            [sys.executable, "-m", "ml_tasks.dataset", "materialize"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            raise ChainError("materializing the dataset failed")
        version = json.loads(done.stdout)["dataset_version"]
        prepared = run("prepare", "--dataset-version", version, "--no-progress", workdir=workdir)
        run("checks", "--dataset-version", version, workdir=workdir)
        trained = run(
            "train", "--dataset-version", version, *(extra_train_args or []), workdir=workdir
        )
        validate_args = ["--run-id", trained["mlflow_run_id"], "--dataset-version", version]
        if force_register:
            validate_args.append("--force-register")
        decided = run("validate", *validate_args, workdir=workdir)
        return {"prepare": prepared, "train": trained, "validate": decided}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_tasks.chain", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--force-register", action="store_true", help="register if the floors pass")
    args = parser.parse_args(argv)
    try:
        out = run_chain(force_register=args.force_register)
    except ChainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    decision = out["validate"]
    print(
        f"\ndataset {out['prepare']['dataset_version'][:12]}: "
        f"{out['prepare']['prepared']} prepared, "
        f"{out['prepare']['quarantined']} quarantined\n"
        f"run {out['train']['mlflow_run_id']}: test accuracy {decision['new']['accuracy']:.4f}\n"
        f"decision: {decision['decision']} — {decision['reason']}"
        + (
            f"\nregistered {decision['model_name']} v{decision['model_version']} as challenger"
            if decision["registered"]
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
