"""``python -m ml_tasks.config``: print the resolved settings every step will use."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from ml_tasks.core.command import command_app, entry_point
from ml_tasks.core.exit_codes import EXIT_USAGE
from ml_tasks.core.settings import ConfigError, load_params, load_settings

app = command_app()


@app.command()
def show(
    params: Annotated[bool, typer.Option("--params", help="also print params.yaml")] = False,
) -> None:
    """Print the resolved Flywheel settings as JSON (what every step will use)."""
    try:
        settings = load_settings()
        out: dict[str, Any] = settings.to_json()
        if params:
            out["params"] = load_params(settings.params_path)
    except ConfigError as exc:  # the environment is wrong, not the options: no usage text
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from exc
    print(json.dumps(out, indent=2, default=str))


main = entry_point(app, "ml_tasks.config")

if __name__ == "__main__":
    raise SystemExit(main())
