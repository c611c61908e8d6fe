"""Grafana dashboard of Flywheel's events (Loki), built from code so its queries can be checked.

After a change, from the repository root::

    python helm-values/dashboards/flywheel_events.py > helm-values/dashboards/flywheel-events.json

tests/helm checks that the committed JSON is this module's output and that every query names
only the labels and structured metadata that helm-values/fluent-bit.yaml sets.

Grafana's own ``grafana-foundation-sdk`` is not in requirements/steps.lock yet, so a small typed
builder stands in for it here: the same shapes (dashboard, panel, target, datasource ref) that
the SDK's ``Dashboard``/``Panel`` builders emit, as dataclasses.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

DATASOURCE = {"type": "loki", "uid": "loki"}  # provisioned by helm-values/grafana.yaml
EVENTS = '{job="flywheel"}'


@dataclass(frozen=True)
class Query:
    """One LogQL query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False

    def to_json(self, ref_id: str) -> dict[str, Any]:
        return {
            "refId": ref_id,
            "datasource": DATASOURCE,
            "expr": self.expr,
            "legendFormat": self.legend,
            "queryType": "instant" if self.instant else "range",
        }


@dataclass(frozen=True)
class Panel:
    """A panel on a 24-column grid."""

    title: str
    kind: str  # timeseries, barchart, table, logs
    queries: tuple[Query, ...]
    width: int = 12
    height: int = 8
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        return {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": DATASOURCE,
            "gridPos": {"x": x, "y": y, "w": self.width, "h": self.height},
            "targets": [q.to_json(chr(ord("A") + i)) for i, q in enumerate(self.queries)],
            "options": self.options,
            "fieldConfig": {"defaults": {}, "overrides": []},
        }


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    panels: tuple[Panel, ...]
    tags: tuple[str, ...] = ()
    refresh: str = "1m"
    time_from: str = "now-7d"

    def to_json(self) -> dict[str, Any]:
        laid_out, x, y, row_height = [], 0, 0, 0
        for i, panel in enumerate(self.panels, start=1):
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            laid_out.append(panel.to_json(i, x, y))
            x, row_height = x + panel.width, max(row_height, panel.height)
        return {
            "uid": self.uid,
            "title": self.title,
            "tags": list(self.tags),
            "timezone": "utc",
            "editable": True,
            "schemaVersion": 39,
            "refresh": self.refresh,
            "time": {"from": self.time_from, "to": "now"},
            "templating": {"list": []},
            "annotations": {"list": []},
            "panels": laid_out,
        }


def flywheel_dashboard() -> Dashboard:
    """Actions per component, gate decisions, alias moves and what went wrong."""
    decisions = '{job="flywheel", action=~"gate_decided|registration_decided"}'
    return Dashboard(
        uid="flywheel-events",
        title="Flywheel events",
        tags=("flywheel",),
        panels=(
            Panel(
                "Actions per component",
                "timeseries",
                (
                    Query(
                        f"sum by (component, action) (count_over_time({EVENTS} [$__auto]))",
                        "{{component}} {{action}}",
                    ),
                ),
                width=24,
                description="Every event a step, the model server or Airflow emitted.",
            ),
            Panel(
                "Gate decisions",
                "barchart",
                (
                    Query(
                        "sum by (action, gate, decision) "
                        f"(count_over_time({decisions} [$__range]))",
                        "{{action}} {{gate}} {{decision}}",
                        instant=True,
                    ),
                ),
                description="register_if_better, approval and registration outcomes.",
            ),
            Panel(
                "Alias moves",
                "logs",
                (Query('{job="flywheel", action="alias_moved"}'),),
                description="champion / challenger moves, with who, why and the versions.",
            ),
            Panel(
                "Warnings and errors",
                "logs",
                (Query('{job="flywheel", level=~"warning|error"}'),),
                width=24,
            ),
        ),
    )


def main() -> int:
    json.dump(flywheel_dashboard().to_json(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
