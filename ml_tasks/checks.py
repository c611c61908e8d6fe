"""Data checks: a Great Expectations suite over the prepared metadata of a dataset version.

Runs after prepare and before training, so a model is never trained on data that breaks the
contract: the known class set, the model's image shape, pixels in [0, 1], no content in two
rows (so none across splits), every split present, class shares within bounds, enough rows.
The full validation result goes to ``prepared/<version>/checks.json`` in the lake; on failure
the step exits 1 with one line per failed expectation and its count of offending rows. Images
prepare found under two labels are kept out of the metadata (quarantined): the report and the
result name them, so whoever reads the checks knows some labels need a person's decision.
"""

from __future__ import annotations

import io
import json
from typing import Any

from ml_tasks.core import events
from ml_tasks.core.command import command_app, entry_point, report
from ml_tasks.core.lake import open_lake
from ml_tasks.core.options import DatasetVersion, ResultPath
from ml_tasks.core.settings import Settings, load_params, load_settings
from ml_tasks.core.step import StepError
from ml_tasks.data.prepared import prepared_prefix
from ml_tasks.resolve_dataset import resolve_dataset_version


def build_suites(params: dict[str, Any], prepare_params: dict[str, Any]) -> dict[str, list[Any]]:
    """The expectations, by the table they read: per-image rows, and per-class shares."""
    import great_expectations as gx

    ex = gx.expectations
    size = int(prepare_params["image_size"])
    classes = [str(c) for c in prepare_params["classes"]]
    return {
        "images": [
            ex.ExpectTableRowCountToBeBetween(min_value=int(params["min_rows"])),
            ex.ExpectColumnValuesToNotBeNull(column="label"),
            ex.ExpectColumnValuesToBeInSet(column="label", value_set=classes),
            ex.ExpectColumnValuesToBeBetween(column="height", min_value=size, max_value=size),
            ex.ExpectColumnValuesToBeBetween(column="width", min_value=size, max_value=size),
            ex.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0.0, max_value=1.0),
            ex.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=0.0, max_value=1.0),
            ex.ExpectColumnValuesToBeUnique(column="content_hash"),
            ex.ExpectColumnDistinctValuesToEqualSet(
                column="split", value_set=["train", "val", "test"]
            ),
        ],
        "class_shares": [
            ex.ExpectColumnValuesToBeBetween(
                column="share",
                min_value=float(params["min_class_share"]),
                max_value=float(params["max_class_share"]),
            ),
            ex.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=classes),
        ],
    }


def run_suites(
    metadata: Any, params: dict[str, Any], prepare_params: dict[str, Any]
) -> dict[str, Any]:
    """Validate the metadata DataFrame; returns a JSON-able report with every result."""
    import great_expectations as gx
    import pandas as pd

    shares = (
        metadata["label"]
        .astype(str)
        .value_counts(normalize=True)
        .rename_axis("label")
        .reset_index(name="share")
    )
    tables = {"images": metadata, "class_shares": shares}
    context = gx.get_context(mode="ephemeral")
    source = context.data_sources.add_pandas("prepared")
    report: dict[str, Any] = {"success": True, "failed": [], "results": []}
    for table, expectations in build_suites(params, prepare_params).items():
        batch = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"flywheel_{table}"))
        for expectation in expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"check_{table}", data=batch, suite=suite)
        )
        frame = tables[table]
        assert isinstance(frame, pd.DataFrame)
        outcome = definition.run(batch_parameters={"dataframe": frame})
        for res in outcome.results:
            config = res.expectation_config
            assert config is not None
            detail = res.result or {}
            entry = {
                "table": table,
                "expectation": config.type,
                "column": config.kwargs.get("column"),
                "success": bool(res.success),
                "unexpected_count": detail.get("unexpected_count"),
                "observed_value": detail.get("observed_value"),
                "partial_unexpected_list": detail.get("partial_unexpected_list", [])[:10],
            }
            report["results"].append(entry)
            if not res.success:
                report["success"] = False
                report["failed"].append(entry)
    return json.loads(json.dumps(report, default=str))


def describe_failure(entry: dict[str, Any]) -> str:
    where = f"{entry['table']}.{entry['column']}" if entry["column"] else entry["table"]
    if entry["unexpected_count"] is not None:
        what = f"{entry['unexpected_count']} offending rows"
        if entry["partial_unexpected_list"]:
            what += f", e.g. {entry['partial_unexpected_list'][:3]}"
    else:
        what = f"observed {entry['observed_value']}"
    return f"{entry['expectation']} on {where}: {what}"


def label_conflicts(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The images prepare found under two or more labels (its ``summary.json``): each content
    hash with every path it was filed under."""
    paths: dict[str, list[str]] = {}
    for item in summary.get("quarantine", []):
        if item["reason"] == "label_conflict":
            paths.setdefault(item["content_hash"], []).append(item["path"])
    return [{"content_hash": digest, "paths": found} for digest, found in paths.items()]


def check(settings: Settings, dataset_version: str) -> dict[str, Any]:
    import pandas as pd

    params = load_params(settings.params_path)
    lake = open_lake(settings.lake_uri)
    prefix = prepared_prefix(lake, dataset_version)
    raw = lake.read_bytes(f"{prefix}/metadata.csv")
    metadata = pd.read_csv(io.BytesIO(raw), dtype={"label": str, "content_hash": str})
    report = run_suites(metadata, params["checks"], params["prepare"])
    report["dataset_version"] = dataset_version
    conflicts = label_conflicts(json.loads(lake.read_bytes(f"{prefix}/summary.json")))
    report["label_conflicts"] = conflicts
    report_uri = lake.url(f"{prefix}/checks.json")
    lake.write_bytes(f"{prefix}/checks.json", json.dumps(report, indent=2).encode())
    failed = [describe_failure(e) for e in report["failed"]]
    events.emit(
        "data_checked",
        dataset_version=dataset_version,
        success=report["success"],
        expectations=len(report["results"]),
        failed=len(failed),
        label_conflicts=len(conflicts),
        report_uri=report_uri,
    )
    if failed:
        raise StepError(
            f"data checks failed for dataset {dataset_version} ({len(failed)} of "
            f"{len(report['results'])} expectations; full report: {report_uri}):\n  - "
            + "\n  - ".join(failed)
        )
    return {
        "dataset_version": dataset_version,
        "checks": "passed",
        "expectations": len(report["results"]),
        "label_conflicts": len(conflicts),
        "report_uri": report_uri,
    }


app = command_app()


@app.command()
def checks(dataset_version: DatasetVersion = None, result_path: ResultPath = None) -> None:
    """Run the Great Expectations data checks on a prepared dataset version."""
    report(
        "checks",
        lambda: check(load_settings(), resolve_dataset_version(dataset_version)),
        result_path=result_path,
        dataset_version=dataset_version,
    )


main = entry_point(app, "ml_tasks.checks")

if __name__ == "__main__":
    raise SystemExit(main())
