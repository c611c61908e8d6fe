"""Run every benchmark and print one table (``make bench``)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

from bench.checkout import changes, fingerprint
from bench.table import Row, report

HERE = Path(__file__).resolve().parent


def orchestrator_python() -> str:
    return os.environ.get(
        "FLYWHEEL_ORCHESTRATOR_PYTHON",
        str(HERE.parent / ".venvs" / "orchestrator" / "bin" / "python"),
    )


def run_module(name: str) -> list[Row]:
    module = importlib.import_module(f"bench.{name}")
    if getattr(module, "ENVIRONMENT", "steps") == "orchestrator":
        done = subprocess.run(
            [orchestrator_python(), "-m", f"bench.{name}", "--json"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE.parent,
        )
        if done.returncode != 0 or not done.stdout.strip():
            raise RuntimeError(f"bench.{name} failed (exit {done.returncode}); see its output")
        rows: list[Row] = json.loads(done.stdout.strip().splitlines()[-1])
        return rows
    result: list[Row] = module.run()
    return result


def main() -> int:
    names = sorted(
        m.name
        for m in pkgutil.iter_modules([str(HERE)])
        if m.name not in {"table", "checkout"} and not m.name.startswith("_")
    )
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {names})")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a target is missed (default: the table shows it, the run succeeds)",
    )
    args = parser.parse_args()
    if unknown := set(args.names) - set(names):
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {names}")
    before = fingerprint()
    rows: list[Row] = []
    for name in args.names or names:
        print(f"running bench.{name} ...", file=sys.stderr, flush=True)
        environment = dict(os.environ)
        try:
            rows.extend(run_module(name))
        finally:
            # What one benchmark set for itself (a server's address, a temporary state folder)
            # must not reach the next one.
            os.environ.clear()
            os.environ.update(environment)
    code = report(rows, strict=args.strict)
    if changed := changes(before, fingerprint()):
        print(
            "error: the benchmarks changed the checkout (they must not):\n  "
            + "\n  ".join(changed),
            file=sys.stderr,
        )
        return 2
    print("the checkout is unchanged (every file, tracked or ignored)", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
