"""The versioned dataset on a fresh clone: DVC to a local remote and to S3, and versions by date."""

import io
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from tests.datasets import materialize
from tests.repo_copy import make_repo_copy
from tests.servers import s3_client, s3_server

pytestmark = pytest.mark.slow


def base_env(root: Path) -> dict[str, str]:
    return {
        "FLYWHEEL_REPO": str(make_repo_copy(root / "repo")),
        "FLYWHEEL_HOME": str(root / "home"),
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "HOME": str(root),
    }


def test_fresh_clone_writes_the_committed_version_then_pulls_it(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    committed = (Path(env["FLYWHEEL_REPO"]) / "data/images.dvc").read_text()
    first = materialize(env)
    assert first["source"] == "scikit-learn digits" and first["images"] == 1797
    # deterministic: the digits hash to the version git already records
    assert (Path(env["FLYWHEEL_REPO"]) / "data/images.dvc").read_text() == committed
    shutil.rmtree(Path(env["FLYWHEEL_REPO"]) / "data" / "images")
    shutil.rmtree(Path(env["FLYWHEEL_REPO"]) / ".dvc" / "cache")
    second = materialize(env)
    assert second == {**first, "source": "dvc pull"}
    assert materialize(env)["source"] == "workspace"


def test_the_dataset_travels_through_an_s3_remote(tmp_path: Path) -> None:
    with s3_server() as endpoint:
        creds = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
        s3 = s3_client(endpoint, "test", "test")
        s3.create_bucket(Bucket="flywheel")
        writer = {**base_env(tmp_path / "writer"), **creds, "FLYWHEEL_DVC_REMOTE": "minio"}
        version = materialize(writer)["dataset_version"]
        stored = s3.list_objects_v2(Bucket="flywheel", Prefix="dvc/")["KeyCount"]
        assert stored >= 1000  # one object per image (listing pages at 1,000) plus the .dir

        # another machine: same commit, its own empty workspace and local remote
        reader = {**base_env(tmp_path / "reader"), **creds, "FLYWHEEL_DVC_REMOTE": "minio"}
        pulled = materialize(reader)
        assert pulled["source"] == "dvc pull" and pulled["dataset_version"] == version


def test_version_as_of_a_date_follows_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml_tasks.core.settings import load_settings
    from ml_tasks.core.step import StepError
    from ml_tasks.data.versions import version_as_of

    repo = make_repo_copy(tmp_path / "repo")
    monkeypatch.setenv("FLYWHEEL_REPO", str(repo))
    rows = [
        {"version": "aaa", "created_at": "2026-01-01T00:00:00+00:00", "images": 10, "note": ""},
        {"version": "bbb", "created_at": "2026-02-01T00:00:00+00:00", "images": 20, "note": ""},
    ]
    (repo / "data/versions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = load_settings()
    assert version_as_of(settings, datetime(2026, 1, 15, tzinfo=UTC)).version == "aaa"
    assert version_as_of(settings, datetime(2026, 2, 1, tzinfo=UTC)).version == "bbb"
    assert version_as_of(settings, datetime(2027, 1, 1)).version == "bbb"
    with pytest.raises(StepError, match="no dataset version existed"):
        version_as_of(settings, datetime(2025, 12, 31, tzinfo=UTC))


def test_prepare_reads_a_version_from_dvcs_record_without_status_or_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml_tasks.core import events
    from ml_tasks.core.lake import open_lake
    from ml_tasks.core.settings import load_settings
    from ml_tasks.data import dvc, versions
    from ml_tasks.prepare import prepare
    from tests.repo_copy import git

    env = base_env(tmp_path)
    first = materialize(env)["dataset_version"]
    for name in ("FLYWHEEL_REPO", "FLYWHEEL_HOME"):
        monkeypatch.setenv(name, env[name])
    for name in ("FLYWHEEL_LAKE_URI", "FLYWHEEL_LOG_PATH", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    log = tmp_path / "events.jsonl"
    monkeypatch.setattr(events._state, "path", log)  # what `configure` sets, undone after
    monkeypatch.setattr(events._state, "stream", io.StringIO())

    def no_status(settings: object) -> bool:
        raise AssertionError("`dvc status` ran: the version was not read from DVC's record")

    for module in (dvc, versions):  # for the whole test
        monkeypatch.setattr(module, "workspace_matches", no_status)
    lake = open_lake(load_settings().lake_uri)

    def pixels(version: str) -> np.ndarray:
        with np.load(io.BytesIO(lake.read_bytes(f"prepared/{version}/data.npz"))) as data:
            return data["x"]

    result = prepare(load_settings())
    assert result.dataset_version == first and result.images_in == 1797
    prepared_first = pixels(first)

    # the work tree changed behind DVC's back: an image added without `dvc add`, another
    # rewritten in place; the version is still prepared as recorded, with nothing fetched
    images = Path(env["FLYWHEEL_REPO"]) / "data" / "images"
    threes = sorted((images / "3").glob("*.png"))
    shutil.copy(threes[0], images / "3" / "not-added.png")
    threes[1].write_bytes(threes[2].read_bytes())
    again = prepare(load_settings())
    assert again.images_in == 1797 and again.decoded == 0
    assert np.array_equal(pixels(first), prepared_first)
    (images / "3" / "not-added.png").unlink()
    threes[1].write_bytes(threes[0].read_bytes())  # not the recorded bytes either

    # a second version (20 more images), then the first again, as a backfill asks for it:
    # both from DVC's record and cache, no checkout of the first
    synthesize_and_add = (
        "from ml_tasks.core.settings import load_settings; "
        "from ml_tasks.data.versions import add_version; "
        "from ml_tasks.data.synthetic import synthesize; "
        "s = load_settings(); synthesize(s.data_dir, count=20, seed=9); add_version(s, 'more')"
    )
    subprocess.run([sys.executable, "-c", synthesize_and_add], env=env, check=True)
    repo = Path(env["FLYWHEEL_REPO"])
    git(repo, "add", "data/images.dvc", "data/versions.jsonl")
    git(repo, "commit", "-q", "-m", "dataset: twenty more")
    second = prepare(load_settings())
    assert second.dataset_version != first and second.images_in == 1817
    assert second.decoded == 20
    backfill = prepare(load_settings(), dataset_version=first)
    assert backfill.images_in == 1797 and backfill.decoded == 0
    assert np.array_equal(pixels(first), prepared_first)
    assert not [e for e in events.read_events(log) if e["action"] == "dataset_fetched"]

    # prepare's caches gone, and one new image neither in DVC's cache nor in the work tree:
    # the version is fetched from the DVC remote
    shutil.rmtree(Path(env["FLYWHEEL_HOME"]) / "cache" / "prepare")
    manifest = dvc.cached_manifest(load_settings(), second.dataset_version)
    old = dvc.cached_manifest(load_settings(), first)
    assert manifest is not None and old is not None
    new = next(rel for rel in manifest if rel not in old)
    (dvc.dvc_objects(load_settings()) / manifest[new][:2] / manifest[new][2:]).unlink()
    (images / new).unlink()
    fetched = prepare(load_settings(), dataset_version=second.dataset_version)
    assert fetched.images_in == 1817
    logged = events.read_events(log)
    not_local = [e for e in logged if e["action"] == "dataset_not_local"]
    assert len(not_local) == 1 and new in not_local[0]["detail"]
    assert [e["dataset_version"] for e in logged if e["action"] == "dataset_fetched"] == [
        second.dataset_version
    ]
