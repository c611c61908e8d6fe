"""``python -m ml_tasks.config``: print the resolved settings every step will use."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ml_tasks.core.settings import ConfigError, load_params, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_tasks.config",
        description="Print the resolved Flywheel settings as JSON (what every step will use).",
    )
    parser.add_argument("--params", action="store_true", help="also print params.yaml")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        out: dict[str, Any] = settings.to_json()
        if args.params:
            out["params"] = load_params(settings.params_path)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
