"""A real ``train`` task, timed out under ``dag.test()``, leaves no step process behind.

The training DAG runs on the local backend with the real steps (prepare, checks, then a long
``train``); the ``train`` task's ``execution_timeout`` fires while the step trains, the Task
SDK raises in the task and calls ``on_kill``. A watcher records every process of the step's
tree while it runs (by ancestry: the step, in a session of its own, is still this process's
child); afterwards none of them may run, and the step's process group must be empty.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from typing import Any

import psutil
import pytest

from tests.dags.conftest import run_dag, task_states
from tests.processes import group_members, running

pytestmark = pytest.mark.slow
TIMEOUT = 25  # seconds: 500 epochs take minutes, so the step is always mid-training then


class StepWatcher(threading.Thread):
    """Records the pids (and process groups) of every ``ml_tasks.train`` tree under us."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pids: set[int] = set()
        self.groups: set[int] = set()
        self.first_seen = self.last_seen = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.is_set():
            try:
                children = me.children(recursive=True)
            except psutil.Error:
                children = []
            for proc in children:
                try:
                    if "ml_tasks.train" in " ".join(proc.cmdline()):
                        tree = [proc, *proc.children(recursive=True)]
                        self.pids.update(p.pid for p in tree)
                        self.groups.add(os.getpgid(proc.pid))
                        self.first_seen = self.first_seen or time.monotonic()
                        self.last_seen = time.monotonic()
                except (psutil.Error, ProcessLookupError):
                    continue
            time.sleep(0.1)


def test_a_timed_out_train_task_leaves_no_step_process(
    training_dag: Any, data_repo: str, mlflow_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = training_dag.get_task("train")
    monkeypatch.setattr(train, "execution_timeout", timedelta(seconds=TIMEOUT))
    monkeypatch.setattr(train, "retries", 0)
    watcher = StepWatcher()
    watcher.start()
    try:
        dag_run, _ = run_dag(training_dag, epochs=500)
    finally:
        watcher.stop.set()
        watcher.join(timeout=10)

    states = task_states(dag_run)
    assert states["checks"] == "success"
    assert states["train"] == "failed"
    assert watcher.pids, "the train step was never seen running"
    assert watcher.groups and os.getpgid(0) not in watcher.groups  # a group of its own
    # Ended at the timeout (plus the SIGTERM grace), not when it finished on its own.
    lifetime = watcher.last_seen - watcher.first_seen
    assert lifetime < TIMEOUT + 10, f"the step ran {lifetime:.0f} s"
    print(f"step seen running for {lifetime:.1f} s; pids {sorted(watcher.pids)}")
    left = [p for p in watcher.pids if running(p)]
    left += [p for g in watcher.groups for p in group_members(g)]
    assert not left, f"step processes left running: {left}"
