"""Every command the README shows is run by a test: the quick ones here, as written (in a
folder laid out like a clone, the steps environment's paths made absolute), the others by the
test named for them, which must exist and run that command. A README command no test runs
fails this module."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.readme_commands import REPO, commands
from tools.local_servers import free_port, wait_for_http

# Commands another test runs: pattern -> (the test file, a token that file must contain).
ELSEWHERE: dict[str, tuple[str, str]] = {
    r"make demo": (".ci/run", "make demo"),
    r"make test": (".ci/run", "make test"),
    # the not-slow part of what `make test` runs, in the same environments
    r"make test-fast": ("Makefile", 'pytest -q -m "not slow"'),
    r"make stack-up": ("tests/annotation/stack_support.py", 'run("up")'),
    r"make stack-down": ("tests/annotation/stack_support.py", 'run("down")'),
    r'eval "\$\(\S+ -m tools\.stack env\)"': ("tests/annotation/stack_support.py", '"env"'),
    r"make pipeline": ("tests/kubeflow/test_local_run.py", "ml_tasks.pipelines"),
    r"\S+ -m ml_tasks\.pipelines local .*": ("tests/kubeflow/test_local_run.py", '"local"'),
    r"\S+ -m ml_tasks\.pipelines submit .*": ("tests/kubeflow/test_submit.py", '"submit"'),
    r"\S+ -m ml_tasks\.tune (run|create|worker|finish) .*": ("tests/tuning", "ml_tasks.tune"),
    r"\S+ -m ml_tasks\.serve --http-port 8085 &": ("tests/serve/test_readme_example.py", "serve"),
    r"curl -s localhost:8085/.*": ("tests/serve/test_readme_example.py", "curl"),
    r"\S+ -m ml_tasks\.feed .*": ("tests/serve/test_feed.py", '"ml_tasks.feed"'),
    r"make images": ("tests/images/test_images.py", "build"),
    r"make push": ("tests/images/test_images.py", "push"),
}
# Run here, as written.
HERE = [
    r"\.venvs/steps/bin/python -m ml_tasks\.config",
    r"\.venvs/steps/bin/python -m ml_tasks\.audit .*",
    r"\.venvs/steps/bin/python -m ml_tasks\.pipelines compile",
    r"tail -f \.flywheel/logs/events\.jsonl",
    r"\.venvs/steps/bin/mlflow ui .*",
    r"\.venvs/steps/bin/optuna-dashboard .*",
]


def matches(patterns: list[str] | dict[str, tuple[str, str]], command: str) -> bool:
    return any(re.fullmatch(p, command) for p in patterns)


def test_every_readme_command_is_run_by_a_test() -> None:
    shown = commands()
    assert len(shown) > 20, "the README's ```bash blocks were not found"
    unrun = [c for c in shown if not matches(HERE, c) and not matches(ELSEWHERE, c)]
    assert not unrun, f"README commands that no test runs: {unrun}"
    for pattern, (where, token) in ELSEWHERE.items():
        if not any(re.fullmatch(pattern, c) for c in shown):
            continue
        path = REPO / where
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        assert any(token in f.read_text() for f in files), f"{where} does not run {pattern}"


def test_every_make_target_the_readme_names_exists() -> None:
    targets = {c.split()[1] for c in commands() if c.startswith("make ")}
    assert {"demo", "test"} <= targets
    for target in targets:
        done = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, f"make {target}: {done.stderr}"


@pytest.fixture
def clone_like(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    """A folder where ``.venvs/`` is the checkout's and ``.flywheel/`` is new: the README's
    relative paths mean what they mean in a clone after ``make demo``."""
    (tmp_path / ".venvs").symlink_to(REPO / ".venvs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "MLFLOW_"))}
    env.update(FLYWHEEL_HOME=str(tmp_path / ".flywheel"), FLYWHEEL_REPO=str(REPO))
    return tmp_path, env


def run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "pattern", [p for p in HERE if "ui" not in p and "dashboard" not in p and "tail" not in p]
)
def test_quick_readme_commands_run_as_written(
    pattern: str, clone_like: tuple[Path, dict[str, str]]
) -> None:
    cwd, env = clone_like
    shown = [c for c in commands() if re.fullmatch(pattern, c)]
    assert shown, f"the README no longer shows {pattern}"
    for command in shown:
        done = run(command, cwd, env)
        assert done.returncode == 0, f"{command}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
    if "compile" in pattern:
        assert list((cwd / ".flywheel" / "pipelines").glob("*.yaml")), "no compiled pipeline"


def test_the_event_log_the_readme_tails_is_where_steps_write(
    clone_like: tuple[Path, dict[str, str]],
) -> None:
    cwd, env = clone_like
    # A step that fails fast still records its start and end in the one event log.
    run(".venvs/steps/bin/python -m ml_tasks.feed --url http://127.0.0.1:9 --count 1", cwd, env)
    [tail] = [c for c in commands() if c.startswith("tail -f ")]
    done = run(f"timeout 2 {tail}", cwd, env)
    assert '"component":"feed"' in done.stdout, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("program", ["mlflow ui", "optuna-dashboard"])
def test_the_readme_s_uis_start_as_written(
    program: str, clone_like: tuple[Path, dict[str, str]]
) -> None:
    cwd, env = clone_like
    shown = sorted({c for c in commands() if f"/{program} " in c})
    assert shown, f"the README no longer shows {program}"
    for command in shown:
        written_port = re.search(r"--port (\d+)", command)
        assert written_port, command
        port = free_port()  # the README's port may be taken here; everything else as written
        command = command.replace(f"--port {written_port[1]}", f"--port {port}")
        (cwd / ".flywheel").mkdir(exist_ok=True)
        if program == "optuna-dashboard":  # a study's storage exists before one is looked at
            subprocess.run(
                [
                    str(REPO / ".venvs/steps/bin/python"),
                    "-c",
                    "import optuna; optuna.storages.RDBStorage('sqlite:///.flywheel/optuna.db')",
                ],
                cwd=cwd,
                check=True,
                env=env,
                capture_output=True,
                timeout=120,
            )
        server = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert answers(f"http://127.0.0.1:{port}/", server, 120), command
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def answers(url: str, server: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether ``url`` answers 200 before ``timeout`` seconds pass or the server exits."""
    try:
        wait_for_http(
            url,
            timeout,
            lambda: server.poll() is None,
            ready=lambda response: response.status == 200,
            request_timeout=5,
        )
    except (RuntimeError, TimeoutError):
        return False
    return True
