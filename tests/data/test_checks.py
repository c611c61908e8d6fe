import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ml_tasks.checks import check
from ml_tasks.core.lake import open_lake
from ml_tasks.core.settings import load_settings
from ml_tasks.core.step import StepError
from ml_tasks.prepare import prepare


def test_digits_pass_every_expectation(flywheel_home: Path, digits_dir: Path) -> None:
    prepare(load_settings(), data_dir=digits_dir, dataset_version="good")
    result = check(load_settings(), "good")
    assert result["checks"] == "passed" and result["expectations"] >= 10
    report = json.loads(open_lake(load_settings().lake_uri).read_bytes("prepared/good/checks.json"))
    assert report["success"] and all(r["success"] for r in report["results"])


def test_a_skewed_dataset_stops_with_the_expectation_named(
    flywheel_home: Path, digits_copy: Path
) -> None:
    folder = digits_copy
    for path in list((folder / "0").iterdir())[5:]:  # keep 5 zeros out of ~178
        path.unlink()
    prepare(load_settings(), data_dir=folder, dataset_version="skewed")
    with pytest.raises(StepError) as err:
        check(load_settings(), "skewed")
    message = str(err.value)
    assert "expect_column_values_to_be_between on class_shares.share: 1 offending rows" in message
    assert "checks.json" in message


def test_the_command_exits_3_and_names_the_failure(
    flywheel_home: Path, digits_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    for label in ("1", "2", "3"):
        shutil.copytree(digits_dir / label, folder / label)
    prepare(load_settings(), data_dir=folder, dataset_version="three-classes")
    done = subprocess.run(
        [sys.executable, "-m", "ml_tasks.checks", "--dataset-version", "three-classes"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 3
    assert "expect_column_distinct_values_to_equal_set on class_shares.label" in done.stderr
