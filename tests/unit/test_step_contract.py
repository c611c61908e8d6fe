"""The step contract every backend relies on: --help, exit codes, one JSON result.

Every command is covered: the commands are found as the modules ``python -m`` can run (a
``__main__`` guard or a package's ``__main__.py``), so a new one is checked without a list to
keep up to date.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OPTION = re.compile(r"""add_argument\(\s*["'](--[a-z0-9-]+)["']""")
SUBCOMMANDS = re.compile(r"\{([a-z0-9_,-]+)\}")


def find_commands() -> dict[str, Path]:
    """``ml_tasks.<x>`` -> the source file that defines its command line."""
    found: dict[str, Path] = {}
    for path in sorted((REPO / "ml_tasks").rglob("*.py")):
        if path.name == "__main__.py":
            found[".".join(path.parent.relative_to(REPO).parts)] = path
        elif '\nif __name__ == "__main__":' in path.read_text():
            found[".".join(path.with_suffix("").relative_to(REPO).parts)] = path
    return found


COMMANDS = find_commands()


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120
    )


def test_every_documented_step_is_found() -> None:
    steps = {"prepare", "checks", "train", "validate", "tune", "deploy", "resolve_dataset"}
    assert {f"ml_tasks.{step}" for step in steps} <= set(COMMANDS)
    assert len(COMMANDS) >= 17


def typer_options(module: str) -> dict[str, list[str]] | None:
    """Subcommand ("" for the command itself) -> its long options, for a Typer command; None
    for an argparse one. Read from the command Typer builds, not from the source text."""
    import importlib

    import typer

    source = f"{module}.__main__" if COMMANDS[module].name == "__main__.py" else module
    app = getattr(importlib.import_module(source), "app", None)
    if not isinstance(app, typer.Typer):
        return None
    command = typer.main.get_command(app)
    subs = getattr(command, "commands", None) or {"": command}
    return {
        name: [o for p in sub.params for o in p.opts if o.startswith("--")]
        for name, sub in subs.items()
    }


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_every_command_explains_itself_and_names_its_options(module: str) -> None:
    done = run(module, "--help")
    assert done.returncode == 0, done.stderr
    assert re.match(rf"\s*usage: python -m {re.escape(module)}\b", done.stdout, re.I), done.stdout
    shown = done.stdout
    options = typer_options(module)
    if options is not None:  # Typer: every subcommand's help names every option it takes
        for name, defined in options.items():
            sub_help = run(module, name, "--help") if name else done
            assert sub_help.returncode == 0, sub_help.stderr
            assert re.match(rf"\s*usage: python -m {module} {name}", sub_help.stdout, re.I)
            missing = sorted(o for o in defined if not re.search(rf"{o}\b", sub_help.stdout))
            assert not missing, f"{module} {name} --help does not name {missing}"
        return
    usage = done.stdout.split("\n\n", 1)[0]
    for sub in (m.group(1).split(",") for m in SUBCOMMANDS.finditer(usage)):
        for name in sub:
            sub_help = run(module, name, "--help")
            assert sub_help.returncode == 0, sub_help.stderr
            assert sub_help.stdout.startswith(f"usage: python -m {module} {name}")
            shown += sub_help.stdout
    defined = set(OPTION.findall(COMMANDS[module].read_text()))
    missing = sorted(o for o in defined if not re.search(rf"{o}\b", shown))
    assert not missing, f"{module} --help does not name {missing}"


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_every_command_refuses_an_unknown_option_with_exit_2(module: str) -> None:
    done = run(module, "--no-such-option")
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert f"python -m {module}" in done.stderr  # how to ask for help, or argparse's prefix


def test_usage_errors_exit_2_with_one_clear_line(flywheel_home: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ml_tasks.train", "--epochs", "0", "--dataset-version", "x"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert "Invalid value for '--epochs'" in done.stderr


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (
            ["ml_tasks.checks", "--dataset-version", "never-prepared"],
            "error: dataset version never-prepared is not prepared",
        ),
        (
            ["ml_tasks.prepare", "--data-dir", "/nonexistent/images", "--dataset-version", "v1"],
            "error: --data-dir /nonexistent/images is not a folder",
        ),
    ],
    ids=["checks", "prepare"],
)
def test_refused_input_exits_3_and_writes_no_result(
    flywheel_home: Path, tmp_path: Path, argv: list[str], error: str
) -> None:
    result = tmp_path / "result.json"
    done = run(*argv, "--result-path", str(result))
    assert done.returncode == 3
    assert error in done.stderr
    assert not result.exists()
    failed = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    component = argv[0].rsplit(".", 1)[-1]
    assert failed[-1]["action"] == "failed" and failed[-1]["component"] == component


def test_a_refused_dataset_date_exits_3(flywheel_home: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ml_tasks.dataset", "as-of", "1990-01-01"],
        capture_output=True,
        text=True,
        env={**os.environ, "FLYWHEEL_REPO": str(tmp_path)},
    )
    assert "error: no dataset version existed at 1990-01-01" in done.stderr
    assert done.returncode == 3


def test_a_step_writes_its_result_where_asked(flywheel_home: Path, tmp_path: Path) -> None:
    from ml_tasks.data.synthetic import synthesize

    synthesize(tmp_path / "images", count=30, size=8)
    result = tmp_path / "out" / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ml_tasks.prepare",
            "--data-dir",
            str(tmp_path / "images"),
            "--dataset-version",
            "tiny",
            "--no-progress",
            "--result-path",
            str(result),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    written = json.loads(result.read_text())
    assert written["prepared"] == 30 and written["status"] == "ok"
    assert json.loads(done.stdout.strip().splitlines()[-1]) == written
