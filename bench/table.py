"""The benchmark row and its table: one format for every benchmark."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, TypedDict

from tabulate import tabulate


class Row(TypedDict):
    benchmark: str
    measure: str
    value: float
    baseline: float | None
    ratio: float | None
    target: str
    ok: bool | None


def row(
    benchmark: str, measure: str, value: float, baseline: float | None, target: str, ok: bool | None
) -> Row:
    ratio = value / baseline if baseline else None
    return {
        "benchmark": benchmark,
        "measure": measure,
        "value": value,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "ok": ok,
    }


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def render(rows: list[Row]) -> str:
    headers = ["benchmark", "measure", "value", "baseline", "ratio", "target", "ok"]
    cells = [[fmt(r[h]) for h in headers] for r in rows]  # type: ignore[literal-required]
    return str(tabulate(cells, headers, disable_numparse=True, stralign="left"))


def missed(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r["ok"] is False]


def exit_code(rows: list[Row], strict: bool) -> int:
    """A benchmark that ran and printed its table succeeded; a missed target is a finding that
    the table shows (and that fails the run only when ``strict``, e.g. to gate a change)."""
    if not rows:
        return 1
    return 1 if strict and missed(rows) else 0


def command(prog: str, description: str | None, measure: Callable[[], list[Row]]) -> int:
    """A benchmark's command line: ``--json`` prints the rows for ``python -m bench``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    return report(measure(), args.json)


def report(rows: list[Row], as_json: bool = False, strict: bool = False) -> int:
    """Print the rows (JSON is how ``python -m bench`` collects them from another environment)
    and the missed targets; the exit code follows :func:`exit_code`."""
    print(json.dumps(rows) if as_json else render(rows))
    if not as_json and (misses := missed(rows)):
        names = ", ".join(f"{r['benchmark']}: {r['measure']}" for r in misses)
        print(f"missed targets ({len(misses)}): {names}")
    return exit_code(rows, strict)
