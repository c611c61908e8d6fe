"""The stack's processes: each service in its own process group, recorded in
``<FLYWHEEL_HOME>/stack/state.json`` so that ``down`` finds them from another shell."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from tools import label_studio_server as lss
from tools.local_servers import wait_for_http
from tools.stack.settings import StackError, state_dir


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
