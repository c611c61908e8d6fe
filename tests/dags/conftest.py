"""Fixtures for the DAG tests: an isolated Airflow (own home, SQLite DB, simple auth manager
with an assigned approver and an unassigned user), an isolated Flywheel state folder and data
repository (git + DVC + scikit-learn's digits), a real MLflow server and a real api-server.

Airflow reads its configuration when first imported, so the environment is set in
``pytest_configure``, before any test module imports Airflow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # tests.servers
sys.path.insert(0, str(REPO / "plugins"))

from flywheel_airflow.rest_api import AirflowApi  # noqa: E402

from tests.servers import mlflow_server, steps_python  # noqa: E402
from tools.demo import APPROVER  # noqa: E402
from tools.local_airflow import (  # noqa: E402
    airflow_cli,
    airflow_env,
    api_connection,
    api_server,
    ensure_passwords,
)

INTRUDER = "intruder"
USERS = {"admin": "admin", APPROVER: "user", INTRUDER: "user"}
_STATE: dict[str, Path] = {}


def pytest_configure(config: pytest.Config) -> None:
    root = Path(tempfile.mkdtemp(prefix="flywheel-dags-tests-"))
    _STATE["root"] = root
    airflow_home = root / "airflow"
    ensure_passwords(airflow_home, USERS)
    env = airflow_env(
        airflow_home,
        users=USERS,
        approvers=f"{APPROVER}:Demo Approver",
        base={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
    )
    env["FLYWHEEL_HOME"] = str(root / "home")
    env["FLYWHEEL_REPO"] = str(root / "repo")
    env["FLYWHEEL_STEPS_PYTHON"] = steps_python()
    env.pop("MLFLOW_TRACKING_URI", None)
    os.environ.clear()
    os.environ.update(env)


def pytest_unconfigure(config: pytest.Config) -> None:
    if root := _STATE.get("root"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def state_root() -> Path:
    return _STATE["root"]


@pytest.fixture(scope="session")
def airflow_db(state_root: Path) -> Path:
    """``airflow db migrate`` once per session; returns AIRFLOW_HOME."""
    airflow_cli(os.environ, "db", "migrate")
    return state_root / "airflow"


def make_data_repo(repo: Path) -> str:
    """A git + DVC repository holding the digits as one dataset version; returns the version."""
    py = os.environ["FLYWHEEL_STEPS_PYTHON"]
    repo.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    (repo / "data").mkdir(exist_ok=True)
    for command in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "tests@flywheel"],
        ["git", "config", "user.name", "tests"],
        [py, "-m", "dvc", "init", "-q"],
        [py, "-m", "dvc", "remote", "add", "local", str(repo.parent / "dvc-remote")],
    ):
        subprocess.run(command, cwd=repo, check=True, capture_output=True)
    done = subprocess.run(
        [py, "-m", "ml_tasks.dataset", "materialize"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "FLYWHEEL_REPO": str(repo)},
    )
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["dataset_version"])


@pytest.fixture(scope="session")
def data_repo(state_root: Path) -> str:
    """The session's dataset version (in ``FLYWHEEL_REPO``)."""
    return make_data_repo(Path(os.environ["FLYWHEEL_REPO"]))


@pytest.fixture(scope="session")
def mlflow_url(state_root: Path) -> Iterator[str]:
    with mlflow_server(state_root / "mlflow") as url:
        os.environ["MLFLOW_TRACKING_URI"] = url
        yield url
        os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def airflow_api(airflow_db: Path) -> Iterator[AirflowApi]:
    """A real api-server on the same metadata DB; tasks set run notes through it too."""
    with api_server(os.environ, airflow_db / "logs" / "api-server.log") as url:
        passwords = json.loads(
            (airflow_db / "simple_auth_manager_passwords.json.generated").read_text()
        )
        connection = api_connection(url, APPROVER, passwords[APPROVER])
        os.environ.update(connection)
        yield AirflowApi(url, passwords)
        for name in connection:
            os.environ.pop(name, None)


@pytest.fixture(scope="session")
def training_dag(airflow_db: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "training.py"))
    assert not bag.import_errors
    return bag.dags["training"]


class Responder(threading.Thread):
    """Answers the run's approval request over REST, as the UI would, once it appears.

    ``attempts`` is a list of ``(user, option)``: every attempt is made in order and its
    outcome recorded (``"ok"`` or the HTTP status), so a test can show an unassigned user is
    refused before the assigned one answers.
    """

    def __init__(
        self, api: AirflowApi, attempts: list[tuple[str, str]], timeout: float = 600
    ) -> None:
        super().__init__(daemon=True)
        self.api, self.attempts, self.timeout = api, attempts, timeout
        self.outcomes: list[tuple[str, str, str]] = []
        self.detail: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        from flywheel_airflow.rest_api import ApiError

        try:
            self.detail = self.api.wait_for_approval(
                "training", "admin", timeout=self.timeout, alive=lambda: not self.done.is_set()
            )
            for user, option in self.attempts:
                try:
                    self.api.answer(self.detail, user, option)
                    self.outcomes.append((user, option, "ok"))
                except ApiError as exc:
                    self.outcomes.append((user, option, str(exc.status)))
        except BaseException as exc:  # reported by the test
            self.error = exc


def run_dag(
    dag: Any,
    api: AirflowApi | None = None,
    attempts: list[tuple[str, str]] | None = None,
    **conf: Any,
) -> tuple[Any, Responder | None]:
    """``dag.test()`` with params ``conf``; answers the approval with ``attempts`` if asked."""
    responder = Responder(api, attempts) if api is not None and attempts else None
    if responder:
        responder.start()
    try:
        dag_run = dag.test(run_conf=conf)
    finally:
        if responder:
            responder.done.set()
            responder.join(timeout=30)
    return dag_run, responder


def task_states(dag_run: Any) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.state).where(
                TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
            )
        ).all()
    return {
        task_id: str(state.value if hasattr(state, "value") else state) for task_id, state in rows
    }


def mlflow_get(url: str, path: str, **query: str) -> dict[str, Any]:
    import urllib.error
    import urllib.parse
    import urllib.request

    try:
        with urllib.request.urlopen(
            f"{url}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}", timeout=10
        ) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return {"error_code": exc.code}


def champion(url: str) -> str | None:
    found = mlflow_get(url, "registered-models/alias", name="digits", alias="champion")
    return found.get("model_version", {}).get("version")


def wait(predicate: Any, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False
