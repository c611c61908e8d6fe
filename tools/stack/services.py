"""Starting the stack's services, in the order that makes ``up`` short: Label Studio first (its
first start is the longest), the rest while it migrates, each waited for once all are started."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from tools import label_studio_server as lss
from tools.local_airflow import api_connection, ensure_passwords
from tools.local_servers import mlflow_command
from tools.registry import registry_command
from tools.stack.processes import alive, launch, read_state, wait_http, write_state
from tools.stack.settings import (
    AIRFLOW_LOG_PORTS,
    AWS,
    BUCKET,
    USERS,
    StackRefused,
    airflow_home,
    check_ports_free,
    kept_secret,
    ports,
    stack_env,
    state_dir,
    venv_bin,
)


def up(serve: bool = True) -> dict[str, Any]:
    """Start every service (refusing before anything starts when one is running or a port is
    taken); returns the state ``down``, ``status`` and ``env`` read back."""
    state = read_state()
    if any(alive(s["pid"]) for s in state.get("services", {}).values()):
        raise StackRefused("the stack is already running: `python -m tools.stack down` first")
    chosen = ports()
    check_ports_free(chosen if serve else {k: v for k, v in chosen.items() if k != "model_service"})
    state = {"ports": chosen}
    state_dir().mkdir(parents=True, exist_ok=True)
    base = {**os.environ, **AWS}
    # Label Studio first: its first start (migrations, ~45 s) overlaps everything else.
    server = lss.start(state_dir() / "label-studio", port=chosen["label_studio"], wait=False)
    state["services"] = {"label_studio": {"pid": server.pid, "log": server.log_path}}
    state["label_studio"] = server.to_json()
    s3 = start_s3(base, state, chosen["s3"])
    start_registry(base, state, chosen["registry"])
    wait_http(state["s3"], 120, s3)
    create_bucket(state["s3"])
    start_mlflow(base, state, chosen["mlflow"])
    start_optuna_dashboard(base, state, chosen["optuna_dashboard"])
    env, api_server = start_airflow(base, state, chosen["airflow"])
    wait_http(f"{state['mlflow']}/health", 120)
    wait_http(f"http://127.0.0.1:{chosen['airflow']}/api/v2/monitor/health", 120, api_server)
    lss.wait_until_up(server.url, 300)
    state["model_service"] = (
        start_model_service(env, state, chosen["model_service"]) if serve else "not requested"
    )
    write_state(state)
    return state


def start_s3(env: dict[str, str], state: dict[str, Any], port: int) -> int:
    """The lake's S3 endpoint (:mod:`tools.local_s3`); returns its process id."""
    data = str(state_dir() / "s3")
    command = [venv_bin("steps", "python"), "-m", "tools.local_s3", "--data-dir", data]
    pid = launch("s3", [*command, "--port", str(port)], env, state)
    state["s3"] = f"http://127.0.0.1:{port}"
    return pid


def start_mlflow(env: dict[str, str], state: dict[str, Any], port: int) -> None:
    """MLflow's tracking server: SQLite, with the artifacts it serves under the stack folder."""
    database, artifacts = state_dir() / "mlflow.db", state_dir() / "mlartifacts"
    command = mlflow_command(venv_bin("steps", "python"), database, artifacts, port)
    launch("mlflow", command, env, state)
    state["mlflow"] = f"http://127.0.0.1:{port}"


def start_optuna_dashboard(env: dict[str, str], state: dict[str, Any], port: int) -> None:
    """Optuna's studies (ml_tasks.tune) and their dashboard, on the same storage."""
    state["optuna_storage"] = f"sqlite:///{state_dir() / 'optuna.db'}"
    # The dashboard does not create Optuna's tables in a new database: create them first.
    subprocess.run(
        [
            venv_bin("steps", "python"),
            "-c",
            "import optuna, sys; optuna.storages.RDBStorage(sys.argv[1])",
            state["optuna_storage"],
        ],
        check=True,
        capture_output=True,
    )
    dashboard = [venv_bin("steps", "optuna-dashboard"), state["optuna_storage"]]
    launch(
        "optuna-dashboard",
        [*dashboard, "--host", "127.0.0.1", "--port", str(port)],
        env,
        state,
    )
    state["optuna_dashboard"] = f"http://127.0.0.1:{port}"


def start_airflow(
    base: dict[str, str], state: dict[str, Any], port: int
) -> tuple[dict[str, str], int]:
    """Airflow's database migrated, then its api-server, scheduler, triggerer and dag-processor;
    returns the environment they run with and the api-server's process id."""
    state["airflow"] = {
        "port": port,
        **AIRFLOW_LOG_PORTS,
        "jwt_secret": kept_secret(airflow_home() / "jwt_secret"),
    }
    write_state(state)
    env = {**base, **stack_env(state)}
    airflow = venv_bin("orchestrator", "airflow")
    passwords = ensure_passwords(airflow_home(), USERS)
    # Run notes (the gates' reasons) are written through the api-server, as admin.
    env.update(api_connection(f"http://127.0.0.1:{port}", "admin", passwords["admin"]))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    pid = launch(
        "airflow-api-server",
        [airflow, "api-server", "-H", "127.0.0.1", "-p", str(port)],
        env,
        state,
    )
    # Their log servers would listen on every interface (Airflow fixes the address); on one
    # machine with one AIRFLOW_HOME the UI reads task and trigger logs from the files instead.
    for part, flags in (
        ("scheduler", ["--skip-serve-logs"]),
        ("triggerer", ["--skip-serve-logs"]),
        ("dag-processor", []),
    ):
        launch(f"airflow-{part}", [airflow, part, *flags], env, state)
    return env, pid


def start_registry(env: dict[str, str], state: dict[str, Any], port: int) -> None:
    """The container registry, when Debian's ``docker-registry`` is installed."""
    if shutil.which("docker-registry") is None:
        state["registry_note"] = "not started: `make image-tools` installs docker-registry"
        return
    launch("registry", registry_command(state_dir() / "registry", port), env, state)
    state["registry"] = f"127.0.0.1:{port}"


def create_bucket(endpoint: str) -> None:
    """The lake's bucket, unless the endpoint already keeps it from an earlier ``up``."""
    key, secret = AWS["AWS_ACCESS_KEY_ID"], AWS["AWS_SECRET_ACCESS_KEY"]
    code = (
        f"import boto3; s3 = boto3.client('s3', endpoint_url={endpoint!r}, "
        f"aws_access_key_id={key!r}, aws_secret_access_key={secret!r}, region_name='us-east-1')\n"
        f"if {BUCKET!r} not in [b['Name'] for b in s3.list_buckets()['Buckets']]:\n"
        f"    s3.create_bucket(Bucket={BUCKET!r})"
    )
    subprocess.run([venv_bin("steps", "python"), "-c", code], check=True, capture_output=True)


def start_model_service(env: dict[str, str], state: dict[str, Any], port: int) -> str:
    """The model service on the champion, champion or not: it waits for one (not ready, with
    the reason on ``/v2/health/ready``) and swaps in every version deploy makes champion."""
    pid = launch(
        "model-service",
        [
            venv_bin("steps", "python"),
            "-m",
            "ml_tasks.serve",
            "--host",
            "127.0.0.1",
            "--http-port",
            str(port),
        ],
        env,
        state,
    )
    url = f"http://127.0.0.1:{port}"
    # Liveness: without a champion yet it is up but not ready, and that is not a failure.
    wait_http(f"{url}/v2/health/live", 120, pid)
    return url
