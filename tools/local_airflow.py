"""An Airflow on this machine for the demo, the tests and the benchmarks: its environment (one
home, one SQLite database, the simple auth manager with named logins), its CLI, and an
api-server on a free port.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from flywheel_airflow.invocation import steps_python
from flywheel_airflow.rest_api import API_CONN_ID

from tools.airflow_home import airflow_home_settings
from tools.local_servers import free_port, running_server

CODE_ROOT = Path(__file__).resolve().parents[1]
SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)


def airflow_env(
    airflow_home: Path,
    *,
    users: Mapping[str, str],
    approvers: str,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of every Airflow command here: one home, one SQLite DB, few processes.

    ``users`` maps user names to simple-auth-manager roles; their passwords are generated into
    ``<home>/simple_auth_manager_passwords.json.generated`` (kept across runs).
    """
    env = dict(base if base is not None else os.environ)
    env.update(
        {
            **airflow_home_settings(airflow_home),
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                f"{u}:{r}" for u, r in users.items()
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__API_AUTH__JWT_SECRET": env.get("AIRFLOW__API_AUTH__JWT_SECRET")
            or secrets.token_urlsafe(32),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
            "FLYWHEEL_APPROVERS": approvers,
            "FLYWHEEL_BACKEND": "local",
            "FLYWHEEL_STEPS_PYTHON": env.get("FLYWHEEL_STEPS_PYTHON") or steps_python(),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def ensure_passwords(airflow_home: Path, users: Iterable[str]) -> dict[str, str]:
    """Each login's password, generated once into the file the simple auth manager reads
    (``<home>/simple_auth_manager_passwords.json.generated``) and kept across runs."""
    path = airflow_home / "simple_auth_manager_passwords.json.generated"
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    for user in users:
        known.setdefault(user, secrets.token_urlsafe(12))
    airflow_home.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known) + "\n")
    path.chmod(0o600)
    return known


def airflow_cli(
    env: Mapping[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), *args],
        env=dict(env),
        capture_output=True,
        text=True,
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"airflow {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return done


@contextmanager
def api_server(env: Mapping[str, str], log_path: Path) -> Iterator[str]:
    """``airflow api-server`` on a free port of 127.0.0.1; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**env, "AIRFLOW__API__BASE_URL": url, "AIRFLOW__API__PORT": str(port)}
    command = [str(Path(sys.executable).parent / "airflow"), "api-server"]
    with running_server(
        [*command, "-H", "127.0.0.1", "-p", str(port), "-w", "1"],
        health_url=f"{url}/api/v2/monitor/health",
        log_path=log_path,
        env=env,
    ):
        yield url


def api_connection(url: str, login: str, password: str) -> dict[str, str]:
    """The environment variable that gives tasks the Airflow Connection to this api-server."""
    connection = {
        "conn_type": "http",
        "host": "127.0.0.1",
        "port": int(url.rsplit(":", 1)[1]),
        "schema": "http",
        "login": login,
        "password": password,
    }
    return {f"AIRFLOW_CONN_{API_CONN_ID.upper()}": json.dumps(connection)}
