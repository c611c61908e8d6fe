"""The stack's fixed settings (ports, logins, the lake's bucket and keys) and the environment
that a shell or a step needs to use the stack."""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from ml_tasks.core.settings import load_settings
from tools.airflow_home import airflow_home_settings

IMAGES = ("steps", "serve")

# The code (environments, DAG files), which FLYWHEEL_REPO (the dataset's repository) may not be.
CODE_ROOT = Path(__file__).resolve().parents[2]

BUCKET = "flywheel"
AWS = {
    "AWS_ACCESS_KEY_ID": "flywheel",
    "AWS_SECRET_ACCESS_KEY": "flywheel-local",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# service -> (environment variable, default port). Fixed, so URLs stay valid across restarts.
PORTS: dict[str, tuple[str, int]] = {
    "s3": ("FLYWHEEL_STACK_S3_PORT", 9000),
    "mlflow": ("FLYWHEEL_STACK_MLFLOW_PORT", 5000),
    "label_studio": ("FLYWHEEL_STACK_LABEL_STUDIO_PORT", 8080),
    "airflow": ("FLYWHEEL_STACK_AIRFLOW_PORT", 8081),
    "model_service": ("FLYWHEEL_STACK_MODEL_SERVICE_PORT", 8085),
    "registry": ("FLYWHEEL_STACK_REGISTRY_PORT", 5050),
    "optuna_dashboard": ("FLYWHEEL_STACK_OPTUNA_DASHBOARD_PORT", 8083),
}
# Airflow wants these set; with --skip-serve-logs nothing listens on them.
AIRFLOW_LOG_PORTS = {"worker_logs": 8793, "trigger_logs": 8794}
# Airflow logins (simple auth manager): name -> (role, what the login is for).
APPROVER, NON_APPROVER = "approver", "non-approver"
USERS: dict[str, tuple[str, str]] = {
    "admin": ("admin", "everything"),
    APPROVER: ("user", "answers the training DAG's approval (FLYWHEEL_APPROVERS)"),
    NON_APPROVER: ("user", "the same role, not an approver: an answer gets 403"),
}


class StackError(RuntimeError):
    """A service of the stack did not come up."""


class StackRefused(StackError):
    """``up`` refused before starting anything (already running, a port taken)."""


def ports() -> dict[str, int]:
    """The port of each service: its default, or the value of its environment variable."""
    chosen = {}
    for service, (variable, default) in PORTS.items():
        raw = os.environ.get(variable, "").strip()
        if not raw:
            chosen[service] = default
            continue
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise StackRefused(f"{variable}={raw!r}: give a TCP port number (1-65535)")
        chosen[service] = int(raw)
    if len(set(chosen.values())) != len(chosen):
        raise StackRefused(f"two services share a port: {chosen}; set the FLYWHEEL_STACK_*_PORT")
    return chosen


def check_ports_free(chosen: dict[str, int]) -> None:
    """Fail before starting anything when a port is taken, naming it and its variable."""
    for service, port in chosen.items():
        with socket.socket() as sock:
            # As the servers do: a port left in TIME_WAIT by the last `down` is free to reuse.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                variable = PORTS[service][0]
                raise StackRefused(
                    f"port {port} for {service.replace('_', ' ')} is taken ({exc.strerror}): "
                    f"stop what listens there, or choose another port with {variable}=PORT"
                ) from exc


def airflow_home() -> Path:
    return load_settings().home / "airflow"


def kept_secret(path: Path) -> str:
    """A secret generated once and kept (Airflow's JWT key: logins survive a restart)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def venv_bin(env: str, name: str) -> str:
    return str(CODE_ROOT / ".venvs" / env / "bin" / name)


def state_dir() -> Path:
    return load_settings().home / "stack"


def stack_env(state: dict[str, Any]) -> dict[str, str]:
    """What a shell (or a step) needs to use the stack: lake, MLflow, Label Studio, Airflow."""
    home = load_settings().home
    env = {
        **AWS,
        "AWS_ENDPOINT_URL": state["s3"],
        "FLYWHEEL_HOME": str(home),
        "FLYWHEEL_LAKE_URI": f"s3://{BUCKET}",
        "FLYWHEEL_DVC_REMOTE": "minio",
        "MLFLOW_TRACKING_URI": state["mlflow"],
        "FLYWHEEL_OPTUNA_STORAGE": state.get("optuna_storage", ""),
        "LABEL_STUDIO_URL": state["label_studio"]["url"],
        "LABEL_STUDIO_API_KEY": state["label_studio"]["token"],
        "FLYWHEEL_STEPS_PYTHON": venv_bin("steps", "python"),
        "FLYWHEEL_APPROVERS": f"{APPROVER}:Approver",
        **airflow_home_settings(airflow_home()),
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
            f"{user}:{role}" for user, (role, _) in USERS.items()
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW_CONN_FLYWHEEL_S3": json.dumps(
            {
                "conn_type": "aws",
                "login": AWS["AWS_ACCESS_KEY_ID"],
                "password": AWS["AWS_SECRET_ACCESS_KEY"],
                "extra": {"endpoint_url": state["s3"], "region_name": AWS["AWS_DEFAULT_REGION"]},
            }
        ),
        "AIRFLOW_CONN_FLYWHEEL_LABEL_STUDIO": json.dumps(
            {
                "conn_type": "http",
                "host": state["label_studio"]["url"],
                "password": state["label_studio"]["token"],
            }
        ),
    }
    if (serving := str(state.get("model_service", ""))).startswith("http"):
        env["FLYWHEEL_SERVE_URL"] = serving  # what `python -m ml_tasks.feed` sends to
    if registry := state.get("registry"):
        # `make push` sends the images here; the backends name them from the same settings.
        env.update({"REGISTRY": registry, "PROJECT": "flywheel"})
        from tools.images import revision

        env.update(
            {
                f"FLYWHEEL_{n.upper()}_IMAGE": f"{registry}/flywheel/{n}:{revision(n)}"
                for n in IMAGES
            }
        )
    if "airflow" in state:
        port = state["airflow"]["port"]
        env.update(
            {
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(state["airflow"]["worker_logs"]),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(state["airflow"]["trigger_logs"]),
                "AIRFLOW__API_AUTH__JWT_SECRET": state["airflow"]["jwt_secret"],
            }
        )
    return env
