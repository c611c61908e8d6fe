"""kfp.local overhead: the training pipeline run by ``kfp.local`` vs. the same steps as commands.

One run each, same data (a fresh clone's digits, materialized untimed), same params
(``params.yaml``), each from an empty state folder (fresh MLflow store and lake), so both
train and register the first model:

- **baseline**: ``prepare``, ``checks``, ``train``, ``validate`` as plain commands back to back
  (what ``ml_tasks.chain`` runs);
- **value**: ``python -m ml_tasks.pipelines local``: compile the pipeline to IR, then
  kfp.local's ``SubprocessRunner`` runs each component (a subprocess that imports kfp and the
  step's function) with its inputs and outputs passed through kfp's executor files.

No target yet: the ratio is reported. Run: ``.venvs/steps/bin/python -m bench.kubeflow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.checkout import repository_copy
from bench.table import Row, command
from bench.table import row as table_row


def _run(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr[-3000:]}")
    return done.stdout


def run_plain(env: dict[str, str], version: str, tmp: Path) -> float:
    def step(name: str, *args: str) -> dict[str, Any]:
        out = tmp / f"{name}.json"
        _run(env, f"ml_tasks.{name}", *args, "--result-path", str(out))
        loaded: dict[str, Any] = json.loads(out.read_text())
        return loaded

    started = time.perf_counter()
    step("prepare", "--dataset-version", version, "--no-progress")
    step("checks", "--dataset-version", version)
    run_id = step("train", "--dataset-version", version, "--no-progress")["mlflow_run_id"]
    decided = step("validate", "--run-id", run_id, "--dataset-version", version)
    elapsed = time.perf_counter() - started
    if not decided["registered"]:
        raise RuntimeError(f"the plain chain did not register: {decided['reason']}")
    return elapsed


def run_kfp_local(env: dict[str, str], version: str) -> float:
    started = time.perf_counter()
    out = _run(env, "ml_tasks.pipelines", "local", "--dataset-version", version)
    elapsed = time.perf_counter() - started
    decided = json.loads(out.strip().splitlines()[-1])
    if not decided["registered"]:
        raise RuntimeError(f"the kfp.local run did not register: {decided['reason']}")
    return elapsed


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-kfp-") as tmp:
        root = Path(tmp)
        repo = repository_copy(root / "repo")
        base = {
            **os.environ,
            "FLYWHEEL_REPO": str(repo),
            "HOME": str(root),
            "MLFLOW_TRACKING_URI": "",
            "FLYWHEEL_LAKE_URI": "",
        }
        setup = {**base, "FLYWHEEL_HOME": str(root / "setup")}
        version = json.loads(_run(setup, "ml_tasks.dataset", "materialize"))["dataset_version"]
        (root / "plain-results").mkdir()
        plain = run_plain(
            {**base, "FLYWHEEL_HOME": str(root / "plain")}, version, root / "plain-results"
        )
        kfp = run_kfp_local({**base, "FLYWHEEL_HOME": str(root / "kfp")}, version)
    return [
        table_row(
            "kubeflow",
            "kfp.local chain / plain commands (s)",
            round(kfp, 2),
            round(plain, 2),
            "none yet",
            None,
        )
    ]


def main() -> int:
    return command("python -m bench.kubeflow", __doc__, run)


if __name__ == "__main__":
    sys.exit(main())
