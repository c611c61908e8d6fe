"""A step's process tree: started in a session of its own, ended as a whole.

A step starts processes of its own (DataLoader workers, DVC's git, MLflow's helpers). Started
in its own session, the step and everything it starts share one process group, so one
``killpg`` reaches all of them, wherever they were reparented. That also takes the step out
of the task's group: the supervisor's signals to the task no longer reach it, so the operator
must end it itself (``on_kill``, or on the way out of ``execute``). Airflow's
``SubprocessHook`` does the same (``start_new_session=True``, ``killpg(SIGTERM)``); this adds
a SIGKILL after a short grace, shorter than the supervisor's own 5 s escalation to SIGKILL on
the task, since a step that ignored SIGTERM would otherwise outlive its task.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

KILL_GRACE_SECONDS = 3.0


class Log(Protocol):
    """What is logged to: the operator's logger (stdlib or Airflow's structlog one)."""

    def info(self, msg: Any, /, *args: Any) -> Any: ...
    def warning(self, msg: Any, /, *args: Any) -> Any: ...
    def error(self, msg: Any, /, *args: Any) -> Any: ...


def start_step_process(command: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    """Start ``command`` with exactly ``env`` as its environment, in a new session and group.

    ``restore_signals`` gives the step default signal dispositions (SIGPIPE included), as a
    shell would, rather than the ones the worker's Python installed.
    """
    return subprocess.Popen(
        list(command),
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        restore_signals=True,
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal still exists
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to the group; False when nothing is left in it."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def terminate_process_group(
    process: subprocess.Popen[str] | None,
    grace: float = KILL_GRACE_SECONDS,
    log: Log | None = None,
) -> None:
    """SIGTERM the step's whole group, wait up to ``grace`` seconds, then SIGKILL what is left.

    The group id is the step's pid (it leads its session), so this still reaches the step's
    children after the step itself exited and was reaped. Safe to call more than once.
    """
    if process is None:
        return
    pgid = process.pid
    process.poll()  # reap the leader if it already exited, so it does not count as alive
    if not _group_alive(pgid):
        return
    if log:
        log.info("Sending SIGTERM to the step's process group %d", pgid)
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()
        if not _group_alive(pgid):
            return
        time.sleep(0.05)
    if log:
        log.warning("Step's process group %d outlived SIGTERM by %.1f s: SIGKILL", pgid, grace)
    _signal_group(pgid, signal.SIGKILL)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:  # uninterruptible sleep; the kernel ends it later
        if log:
            log.error("Step process %d did not exit after SIGKILL", pgid)
