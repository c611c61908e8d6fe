"""Prepare on a plain folder: every image accounted for, re-runs that read only what changed,
splits that stay put as the dataset grows, metadata that matches the arrays."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ml_tasks.core.lake import open_lake
from ml_tasks.core.settings import load_settings
from ml_tasks.core.step import StepError
from ml_tasks.data.prepare_cache import CACHE_FORMAT, DecodeCache
from ml_tasks.data.prepared_writer import PrepareResult
from ml_tasks.data.synthetic import synthesize
from ml_tasks.prepare import prepare


def prepare_dir(folder: Path) -> PrepareResult:
    return prepare(load_settings(), data_dir=folder, dataset_version="test")


def test_digits_prepare_with_every_image_accounted(flywheel_home: Path, digits_dir: Path) -> None:
    result = prepare_dir(digits_dir)
    assert result.images_in == 1797
    assert result.prepared == 1797 and result.quarantined == 0
    assert result.decoded == 1797 and result.from_cache == 0
    assert sum(result.by_split.values()) == 1797
    assert 0.6 < result.by_split["train"] / 1797 < 0.8
    lake = open_lake(load_settings().lake_uri)
    with np.load(io.BytesIO(lake.read_bytes("prepared/test/data.npz"))) as data:
        assert data["x"].shape == (1797, 8, 8) and data["x"].dtype == np.float32
        assert data["x"].min() >= 0.0 and data["x"].max() <= 1.0
        assert len(set(data["hash"].astype(str).tolist())) == 1797
    assert json.loads(lake.read_bytes("prepared/test/summary.json"))["prepared"] == 1797


def test_adding_images_decodes_only_the_new_ones(
    flywheel_home: Path, digits_copy: Path, tmp_path: Path
) -> None:
    folder = digits_copy
    first = prepare_dir(folder)
    extra = tmp_path / "extra"
    synthesize(extra, count=20, size=8)
    for path in extra.rglob("*.png"):
        target = folder / path.parent.name / path.name
        shutil.copy(path, target)
    second = prepare_dir(folder)
    assert second.images_in == first.images_in + 20
    assert second.decoded == 20
    assert second.from_cache == first.prepared


def test_a_file_rewritten_in_place_is_read_again(flywheel_home: Path, digits_copy: Path) -> None:
    folder = digits_copy
    prepare_dir(folder)
    target = sorted((folder / "4").iterdir())[0]
    source = sorted((folder / "9").iterdir())[0]
    target.write_bytes(source.read_bytes())  # same name, other content: only a stat can tell
    second = prepare(load_settings(), data_dir=folder, dataset_version="rewritten")
    assert second.decoded == 0 and second.from_cache == 1795  # content seen before...
    assert {q.path: q.reason for q in second.quarantine} == {
        # ...now under 4 as well: under two labels, neither copy reaches training
        f"4/{target.name}": "label_conflict",
        f"9/{source.name}": "label_conflict",
    }


def test_a_damaged_file_index_means_hashing_again_not_a_failure(
    flywheel_home: Path, digits_copy: Path
) -> None:
    folder = digits_copy
    first = prepare_dir(folder)
    (index,) = (flywheel_home / "cache" / "prepare" / "file-index").glob("*.npz")
    index.write_bytes(b"PK\x03\x04 half a zip file")
    again = prepare_dir(folder)
    assert again.prepared == first.prepared and again.from_cache == first.prepared
    assert again.decoded == 0  # every file read and hashed again, none decoded again


def test_a_new_image_size_decodes_files_the_index_already_knows(
    flywheel_home: Path, digits_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = digits_copy
    prepare_dir(folder)
    params_path = tmp_path / "params.yaml"
    params_path.write_text(
        Path(load_settings().params_path).read_text().replace("image_size: 8", "image_size: 16")
    )
    monkeypatch.setenv("FLYWHEEL_PARAMS", str(params_path))
    resized = prepare(load_settings(), data_dir=folder, dataset_version="sixteen")
    assert resized.decoded == 1797 and resized.prepared == 1797
    lake = open_lake(load_settings().lake_uri)
    with np.load(io.BytesIO(lake.read_bytes("prepared/sixteen/data.npz"))) as data:
        assert data["x"].shape == (1797, 16, 16)


def test_decode_cache_shards_are_merged_and_still_serve_every_image(
    flywheel_home: Path, digits_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = digits_copy
    monkeypatch.setattr(DecodeCache, "MAX_SHARDS", 2)
    prepare_dir(folder)
    for seed in range(3):  # one new shard per run with new images
        synthesize(folder, count=5, size=8, seed=100 + seed)
        prepare_dir(folder)
    shards = list((flywheel_home / "cache" / "prepare" / f"s8-{CACHE_FORMAT}").glob("*.npz"))
    assert len(shards) <= 2
    again = prepare_dir(folder)
    assert again.decoded == 0 and again.from_cache == 1797 + 15


def test_an_image_keeps_its_split_when_the_dataset_grows(
    flywheel_home: Path, digits_copy: Path
) -> None:
    folder = digits_copy
    lake = open_lake(load_settings().lake_uri)

    def splits(version: str) -> dict[str, str]:
        with np.load(io.BytesIO(lake.read_bytes(f"prepared/{version}/data.npz"))) as data:
            return dict(zip(data["hash"].astype(str).tolist(), data["split"].tolist(), strict=True))

    prepare(load_settings(), data_dir=folder, dataset_version="before")
    synthesize(folder, count=100, size=8, seed=7)
    prepare(load_settings(), data_dir=folder, dataset_version="after")
    before, after = splits("before"), splits("after")
    assert len(after) == len(before) + 100
    assert all(after[h] == s for h, s in before.items())


def test_metadata_statistics_match_the_prepared_arrays(flywheel_home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    synthesize(folder, count=60, size=8, seed=3)
    prepare_dir(folder)
    lake = open_lake(load_settings().lake_uri)
    with np.load(io.BytesIO(lake.read_bytes("prepared/test/data.npz"))) as data:
        x, hashes, splits = data["x"], data["hash"].astype(str).tolist(), data["split"].tolist()
    lines = lake.read_bytes("prepared/test/metadata.csv").decode().splitlines()
    assert lines[0].split(",")[-3:] == ["pixel_min", "pixel_max", "pixel_mean"]
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == hashes and [r[3] for r in rows] == splits
    flat = x.reshape(len(x), -1).astype(np.float64)
    stats = np.array([[float(v) for v in r[-3:]] for r in rows])
    assert np.allclose(stats[:, 0], flat.min(axis=1), atol=1e-6)
    assert np.allclose(stats[:, 1], flat.max(axis=1), atol=1e-6)
    assert np.allclose(stats[:, 2], flat.mean(axis=1), atol=1e-6)
    assert {(r[4], r[5]) for r in rows} == {("8", "8")}


def test_missing_folder_is_a_clear_error(flywheel_home: Path, tmp_path: Path) -> None:
    with pytest.raises(StepError, match="is not a folder"):
        prepare_dir(tmp_path / "nowhere")
