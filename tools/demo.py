"""The demo: run the training DAG end to end on this machine and answer its approval over REST.

``.venvs/orchestrator/bin/python -m tools.demo`` (what ``make demo`` calls):

1. an Airflow home under the state folder (``.flywheel/airflow``: SQLite, no examples, this
   repository's ``dags/`` and ``plugins/``, the simple auth manager with a named approver);
2. ``airflow db migrate``; the dataset materialized (``python -m ml_tasks.dataset materialize``
   with the steps interpreter); a deploy an earlier run approved but did not finish is
   finished (``python -m ml_tasks.deploy finish``), so a re-run picks up where it stopped;
3. ``airflow api-server`` on a free loopback port, then ``airflow dags test training`` (through
   :mod:`tools.airflow_cli`: the same command, the collector tuned for a short process);
4. when the run parks at ``await_approval``, the approver answers through the REST API, exactly
   the call the UI's *Required Actions* page makes (``PATCH .../hitlDetails``), so the answer is
   recorded as theirs; the gate itself is never skipped, marked or shortened;
5. every task's state is checked, the api-server stopped, and the run's audit trail printed.

A person approves the same way in the UI: start ``airflow api-server``, ``airflow scheduler``
and ``airflow dag-processor`` with the same ``AIRFLOW_HOME`` (or ``airflow standalone``), log in
as an approver, open *Browse → Required Actions*.

The Airflow it runs is :mod:`tools.local_airflow`'s; the REST calls are
:mod:`flywheel_airflow.rest_api`'s (both shared with the tests and the orchestration benchmark).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from flywheel_airflow.rest_api import AirflowApi

from tools.local_airflow import (
    CODE_ROOT,
    airflow_cli,
    airflow_env,
    api_connection,
    api_server,
    ensure_passwords,
)
from tools.local_servers import stop_process_group

DAG_ID = "training"
APPROVER = "demo-approver"
APPROVER_NAME = "Demo Approver"


def dags_test_command(*args: str) -> list[str]:
    """``airflow dags test training [args]``, parsing only the training DAG's file."""
    return [
        sys.executable,
        "-m",
        "tools.airflow_cli",
        "dags",
        "test",
        DAG_ID,
        "--dagfile-path",
        str(CODE_ROOT / "dags" / f"{DAG_ID}.py"),
        *args,
    ]


FINISH_COMMAND = ".venvs/steps/bin/python -m ml_tasks.deploy finish"


def finish_undone_deploys(env: Mapping[str, str]) -> list[dict[str, Any]]:
    """Deploy what an earlier approved run left undone; returns the promote results.

    Without this a failed deploy is never retried: the approved version stays ``challenger``,
    and the next run's model, compared with it, is rarely better, so nothing asks again.
    """
    done = subprocess.run(
        [env["FLYWHEEL_STEPS_PYTHON"], "-m", "ml_tasks.deploy", "finish", "--who", "demo"],
        env=dict(env),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"finishing an approved deploy failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    finished: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])["finished"]
    return finished


def run_demo(*, answer: str = "Approve", conf: dict[str, Any] | None = None) -> int:
    from ml_tasks.core.settings import load_settings

    settings = load_settings()
    airflow_home = settings.home / "airflow"
    users = {"admin": "admin", APPROVER: "user"}
    passwords = ensure_passwords(airflow_home, users)
    env = airflow_env(airflow_home, users=users, approvers=f"{APPROVER}:{APPROVER_NAME}")
    print(f"Airflow home: {airflow_home}", flush=True)
    airflow_cli(env, "db", "migrate")
    done = subprocess.run(
        [env["FLYWHEEL_STEPS_PYTHON"], "-m", "ml_tasks.dataset", "materialize"],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    print(f"dataset: {json.loads(done.stdout)}", flush=True)
    try:
        finished = finish_undone_deploys(env)
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    for item in finished:
        print(
            f"finished the deploy of v{item['model_version']} approved by {item['approved_by']} "
            "in an earlier run (its deploy had not finished): it is now champion",
            flush=True,
        )
    with api_server(env, airflow_home / "logs" / "api-server.log") as url:
        # The note the gates write (register-if-better's reason) goes through the same API.
        env.update(api_connection(url, APPROVER, passwords[APPROVER]))
        api = AirflowApi(url, passwords)
        print(f"api-server: {url} (log in as {APPROVER} to see Required Actions)", flush=True)
        test = subprocess.Popen(
            dags_test_command(*(["-c", json.dumps(conf)] if conf else [])),
            env=env,
            start_new_session=True,
        )
        try:
            try:
                detail = api.wait_for_approval(
                    DAG_ID, APPROVER, timeout=3600, alive=lambda: test.poll() is None
                )
            except RuntimeError:
                detail = None  # validate skipped registration: no approval to give
            if detail is not None:
                print(
                    f"\n>>> {APPROVER} answers {answer!r} to: {detail['subject']}\n"
                    f"{detail.get('body')}\n",
                    flush=True,
                )
                api.answer(detail, APPROVER, answer)
            code = test.wait()
        finally:
            stop_process_group(test)
        runs = api.call("GET", f"/dags/{DAG_ID}/dagRuns?order_by=-start_date&limit=1", "admin")
        run = runs["dag_runs"][0]
        states = api.task_states(DAG_ID, run["dag_run_id"], "admin")
    print(f"\nrun {run['dag_run_id']}: {run['state']} (note: {run.get('note')})")
    for task_id, state in states.items():
        print(f"  {task_id:24s} {state}")
    bad = {t: s for t, s in states.items() if s not in ("success", "skipped")}
    print("\naudit trail (python -m ml_tasks.audit --run-id ...):", flush=True)
    subprocess.run(
        [env["FLYWHEEL_STEPS_PYTHON"], "-m", "ml_tasks.audit", "--run-id", run["dag_run_id"]],
        env=env,
    )
    if code != 0 or run["state"] != "success" or bad:
        print(
            f"demo failed: airflow dags test exited {code}; tasks not green: {bad}", file=sys.stderr
        )
        if bad.get("deploy") is not None:
            print(
                "the approved version stays challenger until it is deployed: `make demo` again "
                f"finishes it first, or run `{FINISH_COMMAND}`",
                file=sys.stderr,
            )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--answer",
        choices=["Approve", "Reject"],
        default="Approve",
        help="what the demo approver answers (default Approve)",
    )
    parser.add_argument(
        "--conf", type=json.loads, help="DAG params as JSON, e.g. '{\"epochs\": 5}'"
    )
    args = parser.parse_args(argv)
    return run_demo(answer=args.answer, conf=args.conf)


if __name__ == "__main__":
    raise SystemExit(main())
