"""A local Label Studio server: its own virtualenv, headless start, preset admin and token.

Label Studio pins Django and friends, so it lives in ``.venvs/label-studio`` (``install``),
apart from both Flywheel environments; clients only need ``label-studio-sdk``. ``start`` runs
it on 127.0.0.1 with a preset admin and legacy API token (``LABEL_STUDIO_USER_TOKEN`` is only
applied when the user is first created, so keep the token with the data folder), signup
closed, no analytics, and SSRF protection kept on but allowing loopback and private networks
(a local S3 endpoint or an in-cluster MinIO), with the cloud metadata range still banned.

Commands: ``python -m tools.label_studio_server install|start|stop``. Stdlib only,
so it runs from any environment.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tools.local_servers import free_port, wait_for_http

LABEL_STUDIO_VERSION = "1.23.2"
DEFAULT_USERNAME = "admin@flywheel.local"
# The addresses Label Studio must never fetch from, even when asked by a storage or webhook:
# the cloud metadata range and "this host" 0.0.0.0; loopback and private ranges stay allowed
# because MinIO (or the local S3 endpoint) lives there.
BANNED_SUBNETS = "169.254.0.0/16,0.0.0.0/32"


class LabelStudioError(RuntimeError):
    """Label Studio could not be installed or did not come up."""


@dataclass
class LabelStudioServer:
    """A running server: where it listens, how to log in, and its process group."""

    url: str
    token: str
    username: str
    password: str
    data_dir: str
    pid: int
    log_path: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def venv_dir() -> Path:
    """Where Label Studio's own virtualenv lives (``FLYWHEEL_LABEL_STUDIO_VENV`` overrides)."""
    env = os.environ.get("FLYWHEEL_LABEL_STUDIO_VENV")
    return Path(env) if env else repo_root() / ".venvs" / "label-studio"


def label_studio_bin() -> Path:
    return venv_dir() / "bin" / "label-studio"


def install(*, python: str = "python3") -> Path:
    """Create the virtualenv and install Label Studio (~85 s, ~1 GB) unless already there."""
    binary = label_studio_bin()
    if binary.exists():
        return binary
    venv = venv_dir()
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    lock = repo_root() / "requirements" / "label-studio.lock"
    spec = ["-r", str(lock)] if lock.exists() else [f"label-studio=={LABEL_STUDIO_VERSION}"]
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *spec]
    subprocess.run(pip, check=True)
    if not binary.exists():
        raise LabelStudioError(f"pip finished but {binary} is missing")
    return binary


def new_token() -> str:
    """A token shaped like Label Studio's own (40 hex characters)."""
    return secrets.token_hex(20)


def server_env(*, username: str, password: str, token: str, data_dir: Path) -> dict[str, str]:
    """The environment of a headless, locked-down Label Studio (see FIELD-NOTES)."""
    secret_file = data_dir / "secret_key"
    if not secret_file.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        secret_file.write_text(secrets.token_urlsafe(48))
        secret_file.chmod(0o600)
    return {
        **os.environ,
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        # A fixed key: sessions and stored secrets survive restarts.
        "SECRET_KEY": secret_file.read_text().strip(),
        "SSRF_PROTECTION_ENABLED": "true",
        "USE_DEFAULT_BANNED_SUBNETS": "false",
        "USER_ADDITIONAL_BANNED_SUBNETS": BANNED_SUBNETS,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        # Label Studio must not try to reach the internet (there is none on the workers).
        "DISABLE_TELEMETRY": "true",
    }


def _reports_up(response: http.client.HTTPResponse) -> bool:
    try:
        return bool(json.loads(response.read() or b"{}").get("status") == "UP")
    except ValueError:
        return False


def wait_until_up(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``/health`` reports UP; fail early when ``proc`` (the server) exits."""
    try:
        wait_for_http(
            f"{url}/health",
            timeout,
            None if proc is None else lambda: proc.poll() is None,
            ready=_reports_up,
            every=0.5,
            request_timeout=3,
        )
    except RuntimeError:
        code = None if proc is None else proc.returncode
        raise LabelStudioError(f"Label Studio exited with {code} before {url} was up") from None
    except TimeoutError as exc:
        raise LabelStudioError(f"Label Studio at {url} not healthy: {exc}") from None


def start(
    data_dir: Path,
    *,
    port: int | None = None,
    username: str = DEFAULT_USERNAME,
    password: str | None = None,
    token: str | None = None,
    timeout: float = 240.0,
    wait: bool = True,
) -> LabelStudioServer:
    """Start Label Studio on 127.0.0.1 and wait for ``/health``; first start ~45 s.

    With ``wait=False`` it returns at once (call :func:`wait_until_up` before use), so a
    caller can do other set-up while Label Studio migrates its database.
    The admin's password and token are kept in ``<data_dir>/credentials.json``: Label Studio
    applies the preset token only when it creates the user, so a restart must reuse it.
    """
    binary = label_studio_bin()
    if not binary.exists():
        raise LabelStudioError(
            f"{binary} not found: run `python -m tools.label_studio_server install`"
        )
    # Credentials go in the environment, not on the command line (which `ps` shows).
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    credentials = data_dir / "credentials.json"
    if credentials.exists():
        saved = json.loads(credentials.read_text())
        username, password, token = saved["username"], saved["password"], saved["token"]
    else:
        password = password or secrets.token_urlsafe(12)
        token = token or new_token()
        credentials.write_text(
            json.dumps({"username": username, "password": password, "token": token})
        )
        credentials.chmod(0o600)
    assert password is not None and token is not None
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = data_dir / "label-studio.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                str(binary),
                "start",
                "--no-browser",
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
            ],
            env=server_env(username=username, password=password, token=token, data_dir=data_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=data_dir,
        )
    try:
        if wait:
            wait_until_up(url, timeout, proc)
    except LabelStudioError:
        stop_pid(proc.pid)
        tail = log_path.read_text(errors="replace")[-2000:]
        raise LabelStudioError(f"Label Studio did not start; log tail:\n{tail}") from None
    return LabelStudioServer(url, token, username, password, str(data_dir), proc.pid, str(log_path))


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """Stop a server started by :func:`start` (its own process group) and what it spawned."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        _reap(pid)
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.label_studio_server",
        description="Install, start or stop a local Label Studio (its own virtualenv).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "install", help=f"create .venvs/label-studio with label-studio=={LABEL_STUDIO_VERSION}"
    )
    up = sub.add_parser("start", help="start on 127.0.0.1 and print URL, login and token as JSON")
    up.add_argument("--data-dir", type=Path, required=True)
    up.add_argument("--port", type=int, default=None, help="default: a free port")
    down = sub.add_parser("stop", help="stop the server started with this data folder")
    down.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            print(install())
        elif args.command == "start":
            server = start(args.data_dir, port=args.port)
            (args.data_dir / "server.json").write_text(json.dumps(server.to_json()))
            print(json.dumps(server.to_json(), indent=2))
        else:
            state = args.data_dir / "server.json"
            if state.exists():
                stop_pid(int(json.loads(state.read_text())["pid"]))
                state.unlink()
    except (LabelStudioError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
