"""The local stack: every service of the loop on this machine, started and stopped in one go.

``python -m tools.stack up`` starts, on 127.0.0.1 at fixed ports (:data:`PORTS`; each can be
moved with its environment variable, and a port already taken stops ``up`` with its name and
variable):

- a local S3 endpoint (:mod:`tools.local_s3`: moto's S3, every acknowledged write kept on
  disk) with the lake bucket, which also holds the DVC remote;
- MLflow (SQLite + served artifacts);
- Label Studio (its own virtualenv, preset admin and API token, safe SSRF settings);
- a container registry (:mod:`tools.registry`: Debian's ``docker-registry``, the CNCF
  distribution registry) where ``make push`` sends the images and a kubelet would pull them,
  when ``docker-registry`` is installed (``make image-tools``);
- the model service (``python -m ml_tasks.serve``, ``--no-serve`` skips it), which follows
  the ``champion`` alias: without one yet it is live but not ready, says why on its readiness
  route, and serves the first champion as soon as there is one;
- Airflow: api-server (UI), scheduler, triggerer and dag-processor, with Connections for S3
  and Label Studio, low parallelism, and three logins: ``admin``, ``approver`` (the one user
  in ``FLYWHEEL_APPROVERS``, who answers the training DAG's approval) and ``non-approver`` (the
  same role, not an approver: answering an approval gets 403);

then prints the URLs, logins, and the environment to copy into a shell
(``python -m tools.stack env``). ``python -m tools.stack down`` stops all of it
(each service runs in its own process group, recorded in ``<FLYWHEEL_HOME>/stack/state.json``).

Everything the stack holds lives under ``<FLYWHEEL_HOME>/stack`` and ``<FLYWHEEL_HOME>/airflow``
(objects, MLflow's database and artifacts, Label Studio's data, Airflow's database and the
logins' passwords), and the ports do not change, so ``down`` then ``up`` finds it all where it
was, and links already written (an approval form's MLflow links) keep working.

Why here and not under ``plugins/``: it imports neither Airflow nor the ML stack (standard
library only: it starts other programs with their own environments' interpreters), so it runs
from either environment; Airflow imports every module under ``plugins/`` at start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from ml_tasks.core.settings import load_settings
from tools import label_studio_server as lss
from tools.local_airflow import api_connection, ensure_passwords
from tools.local_servers import wait_for_http

IMAGES = ("steps", "serve")

# The code (environments, DAG files), which FLYWHEEL_REPO (the dataset's repository) may not be.
CODE_ROOT = Path(__file__).resolve().parents[1]

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


def read_state() -> dict[str, Any]:
    path = state_dir() / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_state(state: dict[str, Any]) -> None:
    path = state_dir() / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2))


def launch(name: str, command: list[str], env: dict[str, str], state: dict[str, Any]) -> int:
    """Start a service in its own process group, logging to ``stack/<name>.log``."""
    log = state_dir() / f"{name}.log"
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=state_dir(),
        )
    state.setdefault("services", {})[name] = {"pid": proc.pid, "log": str(log)}
    write_state(state)
    return proc.pid


def wait_http(url: str, timeout: float, pid: int | None = None) -> None:
    try:
        wait_for_http(url, timeout, None if pid is None else lambda: alive(pid), every=0.5)
    except RuntimeError:
        raise StackError(f"the service for {url} exited; see its log in {state_dir()}") from None
    except TimeoutError:
        raise StackError(f"{url} did not answer within {timeout:.0f}s") from None


def alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


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
        "AIRFLOW_HOME": str(airflow_home()),
        "AIRFLOW__CORE__DAGS_FOLDER": str(CODE_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(CODE_ROOT / "plugins"),  # training's timetable
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home() / 'airflow.db'}",
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


def up(serve: bool = True) -> dict[str, Any]:
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
    pid = launch(
        "s3",
        [
            venv_bin("steps", "python"),
            "-m",
            "tools.local_s3",
            "--data-dir",
            str(state_dir() / "s3"),
            "--port",
            str(chosen["s3"]),
        ],
        base,
        state,
    )
    state["s3"] = f"http://127.0.0.1:{chosen['s3']}"
    start_registry(base, state, chosen["registry"])
    wait_http(state["s3"], 120, pid)
    create_bucket(state["s3"])
    pid = launch(
        "mlflow",
        [
            venv_bin("steps", "python"),
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{state_dir() / 'mlflow.db'}",
            "--artifacts-destination",
            str(state_dir() / "mlartifacts"),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(chosen["mlflow"]),
            "--workers",
            "1",
        ],
        base,
        state,
    )
    state["mlflow"] = f"http://127.0.0.1:{chosen['mlflow']}"
    # Optuna's studies (ml_tasks.tune) and their dashboard, on the same storage.
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
    port = str(chosen["optuna_dashboard"])
    launch("optuna-dashboard", [*dashboard, "--host", "127.0.0.1", "--port", port], base, state)
    state["optuna_dashboard"] = f"http://127.0.0.1:{port}"
    state["airflow"] = {
        "port": chosen["airflow"],
        **AIRFLOW_LOG_PORTS,
        "jwt_secret": kept_secret(airflow_home() / "jwt_secret"),
    }
    write_state(state)
    env = {**base, **stack_env(state)}
    airflow = venv_bin("orchestrator", "airflow")
    passwords = ensure_passwords(airflow_home(), USERS)
    # Run notes (the gates' reasons) are written through the api-server, as admin.
    env.update(api_connection(f"http://127.0.0.1:{chosen['airflow']}", "admin", passwords["admin"]))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    pid = launch(
        "airflow-api-server",
        [airflow, "api-server", "-H", "127.0.0.1", "-p", str(chosen["airflow"])],
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
    wait_http(f"{state['mlflow']}/health", 120)
    wait_http(f"http://127.0.0.1:{chosen['airflow']}/api/v2/monitor/health", 120, pid)
    lss.wait_until_up(server.url, 300)
    state["model_service"] = (
        start_model_service(env, state, chosen["model_service"]) if serve else "not requested"
    )
    write_state(state)
    return state


def start_registry(env: dict[str, str], state: dict[str, Any], port: int) -> None:
    """The container registry, when Debian's ``docker-registry`` is installed."""
    import shutil

    from tools.registry import registry_command

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


def down() -> list[str]:
    """Stop every service the stack started (their process groups), newest first."""
    state = read_state()
    stopped = []
    for name, service in reversed(list(state.get("services", {}).items())):
        pid = int(service["pid"])
        if alive(pid):
            lss.stop_pid(pid)
            stopped.append(name)
    if state:
        write_state({k: v for k, v in state.items() if k != "services"})
    return stopped


def describe(state: dict[str, Any]) -> str:
    passwords_file = airflow_home() / "simple_auth_manager_passwords.json.generated"
    passwords = json.loads(passwords_file.read_text()) if passwords_file.exists() else {}
    ls = state["label_studio"]
    lines = [f"Airflow UI     http://127.0.0.1:{state['airflow']['port']}   logins:"]
    for user, (role, purpose) in USERS.items():
        lines.append(f"  {user:<13}{passwords.get(user, '?'):<18} {role:<6} {purpose}")
    lines += [
        "  (approvals: Browse -> Required Actions, as approver)",
        f"Label Studio   {ls['url']}   login {ls['username']} / {ls['password']}   "
        f"API token {ls['token']}",
        f"MLflow         {state['mlflow']}",
        f"Optuna         {state.get('optuna_dashboard')}   (studies of ml_tasks.tune)",
        f"S3             {state['s3']}   bucket {BUCKET}   keys {AWS['AWS_ACCESS_KEY_ID']} / "
        f"{AWS['AWS_SECRET_ACCESS_KEY']}   (objects kept in {state_dir() / 's3'})",
        f"Model service  {state.get('model_service')}   (follows the champion; "
        "/v2/health/ready says why it is not ready yet)",
        f"Registry       {state.get('registry') or state.get('registry_note')}   "
        "(make push with REGISTRY and PROJECT from the environment above)",
        f"Logs           {state_dir()}",
        'Environment    eval "$(python -m tools.stack env)"',
        "Stop           python -m tools.stack down   (everything is kept for the next up)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.stack", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start everything and print URLs and logins")
    start.add_argument("--no-serve", action="store_true", help="do not start the model service")
    sub.add_parser("down", help="stop everything `up` started")
    sub.add_parser("status", help="print URLs and logins of the running stack")
    sub.add_parser("env", help="print `export` lines for a shell that uses the stack")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            try:
                print(describe(up(serve=not args.no_serve)))
            except StackRefused:
                raise  # nothing was started: a running stack stays up
            except (StackError, lss.LabelStudioError, subprocess.CalledProcessError):
                down()
                raise
        elif args.command == "down":
            print("stopped: " + (", ".join(down()) or "nothing was running"))
        else:
            state = read_state()
            if not state.get("services"):
                print("the stack is not running", file=sys.stderr)
                return 1
            if args.command == "status":
                print(describe(state))
            else:
                import shlex

                for key, value in stack_env(state).items():
                    print(f"export {key}={shlex.quote(value)}")
    except (StackError, lss.LabelStudioError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main())
