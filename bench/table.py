"""The benchmark row and its table: one format for every benchmark."""

from __future__ import annotations

import json
from typing import Any, TypedDict


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
    return Row(
        benchmark=benchmark,
        measure=measure,
        value=value,
        baseline=baseline,
        ratio=ratio,
        target=target,
        ok=ok,
    )


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
    widths = [
        max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(out)


def report(rows: list[Row], as_json: bool = False) -> int:
    """Print the rows (JSON is how ``python -m bench`` collects them from another environment);
    the exit code is 1 when a target was missed."""
    print(json.dumps(rows) if as_json else render(rows))
    return 0 if all(r["ok"] is not False for r in rows) else 1
