"""One way to make a typed function a command: Typer parses the options, the step contract reports.

A command module declares its options once, as the typed parameters of a function registered
on ``app = command_app(...)``; Typer checks types and ranges (a bad value is a usage error, exit
2, naming the option), and :func:`report` runs the work through :func:`~ml_tasks.core.step.run_step`
(events, the JSON result, exit codes 3 and 75). ``main = entry_point(app, "ml_tasks.<name>")``
gives the ``main(argv) -> exit code`` that ``python -m``, tests and Kubeflow components call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import typer

from ml_tasks.core.step import StepResult, default_result_path, run_step


def command_app(help: str | None = None, *, epilog: str | None = None) -> typer.Typer:
    """A Typer app with Flywheel's settings: no shell-completion options, plain tracebacks.

    ``help`` and ``epilog`` describe a command with subcommands; a command with one function
    takes its help from that function's docstring (and ``@app.command(epilog=...)``).
    """
    return typer.Typer(
        help=help, epilog=epilog, add_completion=False, pretty_exceptions_enable=False
    )


def finish(code: int) -> None:
    """End the command with ``code`` (Typer would end a returning command with 0)."""
    if code:
        raise typer.Exit(code)


def report(
    component: str, body: Callable[[], StepResult], /, *, result_path: Path | None, **context: Any
) -> None:
    """Run ``body`` as step ``component`` under the step contract and end with its exit code.

    ``context`` (the dataset version, the study...) goes on the step's started/failed events;
    the events' own fields (``level``, ``error``, ``seconds``, ``status``, ``retry``) are not
    context names.
    """
    path = result_path if result_path is not None else default_result_path()
    finish(run_step(component, body, result_path=path, context=context))


class Main(Protocol):
    def __call__(self, argv: list[str] | None = None) -> int: ...


def entry_point(app: typer.Typer, module: str) -> Main:
    """``main(argv) -> exit code`` for ``app``, shown as ``python -m <module>`` in its help."""

    def main(argv: list[str] | None = None) -> int:
        command = typer.main.get_command(app)
        try:
            command.main(args=argv, prog_name=f"python -m {module}", standalone_mode=True)
        except SystemExit as exc:
            code = exc.code
            return code if isinstance(code, int) else (0 if code is None else 1)
        return 0

    return main
