"""The step chain without an orchestrator: materialize, prepare, checks, train, validate.

Runs each step as the same command a DAG task or a pod runs (a subprocess of this
interpreter, reading the previous step's JSON result), so it is both a quick way to try the
loop and the baseline the orchestration-overhead benchmark compares Airflow against.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ml_tasks.core.command import command_app, entry_point


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


@dataclass(frozen=True)
class ChainResult:
    """The JSON results of the steps whose outcome the chain reports."""

    prepare: dict[str, Any]
    train: dict[str, Any]
    validate: dict[str, Any]

    def summary(self) -> str:
        """What a person wants to read after a run: the data, the accuracy, the decision."""
        prepared, decision = self.prepare, self.validate
        lines = [
            f"dataset {prepared['dataset_version'][:12]}: {prepared['prepared']} prepared, "
            f"{prepared['quarantined']} quarantined",
            f"run {self.train['mlflow_run_id']}: test accuracy {decision['new']['accuracy']:.4f}",
            f"decision: {decision['decision']} — {decision['reason']}",
        ]
        if decision["registered"]:
            lines.append(
                f"registered {decision['model_name']} v{decision['model_version']} as challenger"
            )
        return "\n".join(lines)


def run_chain(
    *, force_register: bool = False, extra_train_args: list[str] | None = None
) -> ChainResult:
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
        return ChainResult(prepare=prepared, train=trained, validate=decided)


app = command_app()


@app.command()
def chain(
    force_register: Annotated[
        bool, typer.Option("--force-register", help="register if the floors pass")
    ] = False,
) -> None:
    """Run the step chain without an orchestrator: materialize, prepare, checks, train, validate."""
    try:
        out = run_chain(force_register=force_register)
    except ChainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from exc
    print("\n" + out.summary())


main = entry_point(app, "ml_tasks.chain")

if __name__ == "__main__":
    raise SystemExit(main())
