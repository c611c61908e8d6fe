"""Orchestration overhead: the training DAG under ``airflow dags test`` vs. the same commands.

One run each, same data, same params (``params.yaml``), each from an empty state folder
(fresh MLflow store and lake), so both register and deploy the first model:

- **baseline**: the DAG's step commands run back to back by a plain loop (what
  ``ml_tasks.chain`` does, plus the DAG's first and last steps): ``resolve_dataset``,
  ``prepare``, ``checks``, ``train``, ``validate``, ``deploy promote``;
- **value**: ``airflow dags test training`` (local backend), its approval answered through the
  REST API by the demo approver as soon as it is asked (the gate is not marked or skipped), so
  the time includes Airflow's start-up, scheduling loop, XCom, branch and HITL round trip.
  Run the way ``make demo`` runs it (``python -m tools.airflow_cli``: Airflow's CLI with
  the collector tuned for a short process, only the training DAG's file parsed), and, for
  reference, with the ``airflow`` command as installed.

Target: value / baseline <= 1.3. Also one row per DAG file: the time to parse it (DagBag, in a
fresh interpreter, after ``airflow.sdk`` is imported) against the time to import ``airflow.sdk``
itself; target: a DAG file costs no more than the SDK import.

The dataset comes from a throwaway copy of the repository (``bench.checkout.repository_copy``),
materialized as on a fresh clone (``python -m ml_tasks.dataset materialize``): DVC and git
never run in the checkout, so a benchmark leaves it as it was.
Run: ``.venvs/orchestrator/bin/python -m bench.orchestration``.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

ENVIRONMENT = "orchestrator"
TARGET_OVERHEAD = 1.3


def row(benchmark: str, measure: str, value: float, baseline: float, target: float) -> Row:
    ratio = value / baseline if baseline else float("inf")
    return table_row(
        benchmark, measure, round(value, 3), round(baseline, 3), f"<= {target}", ratio <= target
    )


def run_plain(env: dict[str, str], python: str) -> float:
    """The DAG's step commands back to back, each reading the previous result."""
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-plain-") as tmp:

        def step(name: str, *args: str) -> dict[str, Any]:
            out = Path(tmp) / f"{name}-{len(list(Path(tmp).iterdir()))}.json"
            done = subprocess.run(
                [python, "-m", f"ml_tasks.{name}", *args, "--result-path", str(out)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"step {name} failed: {done.stderr[-3000:]}")
            loaded: dict[str, Any] = json.loads(out.read_text())
            return loaded

        started = time.perf_counter()
        version = str(step("resolve_dataset")["dataset_version"])
        step("prepare", "--dataset-version", version, "--no-progress")
        step("checks", "--dataset-version", version)
        run_id = step(
            "train", "--dataset-version", version, "--caller-run-id", "plain", "--no-progress"
        )["mlflow_run_id"]
        decided = step(
            "validate", "--run-id", run_id, "--dataset-version", version, "--caller-run-id", "plain"
        )
        if not decided["registered"]:
            raise RuntimeError(f"baseline did not register: {decided['reason']}")
        step(
            "deploy",
            "promote",
            "--model-version",
            str(decided["model_version"]),
            "--approved-by",
            "bench",
            "--caller-run-id",
            "plain",
        )
        return time.perf_counter() - started


def run_airflow(
    env: dict[str, str], airflow_home: Path, passwords: dict[str, str], command: list[str]
) -> float:
    from flywheel_airflow.rest_api import AirflowApi

    from tools.demo import APPROVER, DAG_ID
    from tools.local_airflow import api_server
    from tools.local_servers import stop_process_group

    with api_server(env, airflow_home / "logs" / "api-server.log") as url:
        api = AirflowApi(url, passwords)
        started = time.perf_counter()
        test = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            detail = api.wait_for_approval(
                DAG_ID, APPROVER, timeout=3600, alive=lambda: test.poll() is None
            )
            api.answer(detail, APPROVER, "Approve")
            code = test.wait()
        finally:
            stop_process_group(test)
        elapsed = time.perf_counter() - started
        runs = api.call("GET", f"/dags/{DAG_ID}/dagRuns?order_by=-start_date&limit=1", "admin")
        run = runs["dag_runs"][0]
        states = api.task_states(DAG_ID, run["dag_run_id"], "admin")
    if code != 0 or run["state"] != "success" or states.get("deploy") != "success":
        raise RuntimeError(
            f"airflow dags test did not deploy: exit {code}, {run['state']}, {states}"
        )
    return elapsed


def step_seconds(log: Path) -> dict[str, float]:
    """Each step's own time (its ``finished`` event), to tell step time from orchestration."""
    found: dict[str, float] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        event = json.loads(line)
        if event.get("action") == "finished":
            found[event["component"]] = round(
                found.get(event["component"], 0) + event["seconds"], 2
            )
    return found


PARSE_PROBE = """
import json, sys, time
started = time.perf_counter()
import airflow.sdk  # noqa: F401
from airflow.dag_processing.dagbag import DagBag
sdk = time.perf_counter() - started
started = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"sdk": sdk, "parse": time.perf_counter() - started,
                  "errors": len(bag.import_errors)}))
"""


def parse_rows(env: dict[str, str]) -> list[Row]:
    rows = []
    for path in sorted((REPO / "dags").glob("*.py")):
        done = subprocess.run(
            [sys.executable, "-c", PARSE_PROBE, str(path)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        probe = json.loads(done.stdout.strip().splitlines()[-1])
        if probe["errors"]:
            raise RuntimeError(f"{path.name} has import errors")
        rows.append(
            row(
                "dag_parse",
                f"{path.name} parse s vs airflow.sdk import s",
                probe["parse"],
                probe["sdk"],
                1.0,
            )
        )
    return rows


def run() -> list[Row]:
    from tools.demo import APPROVER, DAG_ID, dags_test_command
    from tools.local_airflow import airflow_cli, airflow_env, ensure_passwords, steps_python

    with tempfile.TemporaryDirectory(prefix="flywheel-bench-orch-") as tmp:
        root = Path(tmp)
        users = {"admin": "admin", APPROVER: "user"}
        airflow_home = root / "airflow"
        passwords = ensure_passwords(airflow_home, users)
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "MLFLOW_TRACKING_URI"))
        }
        base = {k: v for k, v in base.items() if not k.startswith(("FLYWHEEL_", "AWS_"))}
        base["FLYWHEEL_REPO"] = str(repository_copy(root / "repo"))
        env = airflow_env(airflow_home, users=users, approvers=APPROVER, base=base)
        python = steps_python()
        airflow_cli(env, "db", "migrate")
        subprocess.run(
            [python, "-m", "ml_tasks.dataset", "materialize"],
            env={**env, "FLYWHEEL_HOME": str(root / "materialize")},
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Warm the OS file cache for both sides alike (the first import of torch, MLflow and
        # Great Expectations from disk costs more than every later one).
        subprocess.run(
            [python, "-c", "import torch, mlflow.pytorch, great_expectations, sklearn"],
            env=env,
            check=True,
            capture_output=True,
        )
        plain = run_plain({**env, "FLYWHEEL_HOME": str(root / "plain")}, python)
        orchestrated = run_airflow(
            {**env, "FLYWHEEL_HOME": str(root / "airflow-run")},
            airflow_home,
            passwords,
            dags_test_command(),
        )
        as_installed = run_airflow(
            {**env, "FLYWHEEL_HOME": str(root / "airflow-cli")},
            airflow_home,
            passwords,
            [str(Path(sys.executable).parent / "airflow"), "dags", "test", DAG_ID],
        )
        for side in ("plain", "airflow-run", "airflow-cli"):
            steps = step_seconds(root / side / "logs" / "events.jsonl")
            print(f"{side}: step seconds {steps} (sum {sum(steps.values()):.1f})", file=sys.stderr)
        rows = [
            row(
                "orchestration",
                "airflow dags test s (as make demo runs it) vs plain step commands s",
                orchestrated,
                plain,
                TARGET_OVERHEAD,
            ),
            table_row(
                "orchestration",
                "the same with the `airflow` command as installed (reference)",
                round(as_installed, 3),
                round(plain, 3),
                "-",
                None,
            ),
        ]
        rows += parse_rows(env)
    return rows


def main() -> int:
    return command("python -m bench.orchestration", __doc__.split("\n\n")[0], run)


if __name__ == "__main__":
    sys.exit(main())
