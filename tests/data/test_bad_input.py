"""Bad input gets a clear error or a quarantine with a reason, and nothing is lost: every entry
of a dataset folder is prepared, quarantined or skipped, with a reason (issue 12, prepare)."""

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml_tasks.core import events
from ml_tasks.core.lake import LocalLake, open_lake
from ml_tasks.core.settings import load_settings
from ml_tasks.data.dvc import VersionFiles, VersionNotLocal
from ml_tasks.data.prepared_writer import PrepareResult
from ml_tasks.data.synthetic import synthesize
from ml_tasks.prepare import prepare
from tests.commands import step_result
from tests.conftest import REPO
from tests.data.bad_input import (
    SYSTEM_FILE,
    Verdict,
    build_corpus,
    encoded,
    format_samples,
    pattern,
)


def prepare_folder(folder: Path, version: str = "test") -> PrepareResult:
    return prepare(load_settings(), data_dir=folder, dataset_version=version)


def verdicts(result: PrepareResult) -> dict[str, Verdict]:
    """Every entry's outcome, from the result and the prepared metadata in the lake."""
    lake = open_lake(load_settings().lake_uri)
    metadata = lake.read_bytes(f"prepared/{result.dataset_version}/metadata.csv").decode()
    got = {
        row["path"]: Verdict("prepared", row["label"])
        for row in csv.DictReader(io.StringIO(metadata))
    }
    got |= {q.path: Verdict("quarantined", q.reason) for q in result.quarantine}
    got |= {s.path: Verdict("skipped", s.reason) for s in result.skips}
    return got


def prepared_hashes(version: str) -> set[str]:
    lake = open_lake(load_settings().lake_uri)
    with np.load(io.BytesIO(lake.read_bytes(f"prepared/{version}/data.npz"))) as data:
        return set(data["hash"].astype(str).tolist())


def log_events(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    log = tmp_path / "events.jsonl"
    monkeypatch.setattr(events._state, "path", log)
    monkeypatch.setattr(events._state, "stream", io.StringIO())
    return log


@pytest.mark.timeout(300)
def test_every_entry_of_the_bad_input_corpus_gets_its_verdict(
    flywheel_home: Path, tmp_path: Path
) -> None:
    expected = build_corpus(tmp_path / "images", tmp_path / "outside")
    assert {"PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"} <= set(format_samples())
    for version in ("first", "again"):  # decoding everything, then from the caches
        result = prepare_folder(tmp_path / "images", version)
        assert verdicts(result) == expected
        counts = result.prepared + result.quarantined + result.skipped
        assert counts == result.offered == len(expected)
    assert result.decoded == 0
    lake = open_lake(load_settings().lake_uri)  # the same files in two versions: two records each
    records = [k for k in lake.list("quarantine/prepare/") if k.endswith("/reason.json")]
    assert len(records) == 2 * result.quarantined == len(set(records))


# 1. label conflicts


def test_an_image_under_two_labels_reaches_training_with_neither(
    flywheel_home: Path, tmp_path: Path
) -> None:
    from ml_tasks.checks import check

    folder = tmp_path / "images"
    synthesize(folder, count=300, size=8, seed=4)  # enough rows for the data checks
    one = sorted((folder / "1").glob("*.png"))[0]
    shutil.copy(one, folder / "7" / "copy.png")
    shutil.copy(one, folder / "1" / "again.png")
    copies = {f"1/{one.name}", "1/again.png", "7/copy.png"}
    for _ in range(2):  # decoding everything, then from the caches
        result = prepare_folder(folder)
        conflicts = [q for q in result.quarantine if q.reason == "label_conflict"]
        assert {q.path for q in conflicts} == copies
        assert all(all(path in q.detail for path in copies) for q in conflicts)
        assert conflicts[0].content_hash not in prepared_hashes("test")
        assert result.prepared == 299 and result.label_conflicts == 1
    checked = check(load_settings(), "test")
    assert checked["label_conflicts"] == 1
    report = json.loads(open_lake(load_settings().lake_uri).read_bytes("prepared/test/checks.json"))
    assert [sorted(c["paths"]) for c in report["label_conflicts"]] == [sorted(copies)]


# 2. symlinks


def test_a_symlink_is_never_followed_out_of_the_dataset(
    flywheel_home: Path, tmp_path: Path
) -> None:
    folder, outside = tmp_path / "images", tmp_path / "outside"
    synthesize(folder, count=30, size=8, seed=5)
    outside.mkdir()
    secret = encoded(Image.fromarray(pattern(8, seed=9)), "PNG")
    (outside / "secret.png").write_bytes(secret)
    (folder / "extra").mkdir()
    (folder / "extra" / "kept.png").write_bytes(encoded(Image.fromarray(pattern(8, seed=8)), "PNG"))
    os.symlink(outside / "secret.png", folder / "5" / "outside.png")
    os.symlink(SYSTEM_FILE, folder / "5" / "system")
    os.symlink("../extra/kept.png", folder / "5" / "inside.png")
    result = prepare_folder(folder)
    assert {s.path: s.reason for s in result.skips} == {
        "5/outside.png": "symlink_outside",
        "5/system": "symlink_outside",
    }
    assert verdicts(result)["5/inside.png"] == Verdict("prepared", "5")
    lake = open_lake(load_settings().lake_uri)
    system_bytes = Path(SYSTEM_FILE).read_bytes()
    assert all(lake.read_bytes(key) not in (secret, system_bytes) for key in lake.list(""))
    assert result.offered == 34 == result.prepared + result.quarantined + result.skipped


# 3. entries that are not regular files


@pytest.mark.parametrize("kind", ["dangling_symlink", "symlink_loop", "not_a_regular_file"])
def test_one_odd_entry_neither_stops_nor_hangs_the_run(
    flywheel_home: Path, tmp_path: Path, kind: str
) -> None:
    folder = tmp_path / "images"
    synthesize(folder, count=30, size=8, seed=6)
    odd = folder / "2" / "odd.png"
    if kind == "dangling_symlink":
        os.symlink("../gone.png", odd)
    elif kind == "symlink_loop":
        os.symlink("odd.png", odd)
    else:
        os.mkfifo(odd)  # open() for reading would wait for a writer forever
    result = step_result(
        "ml_tasks.prepare",
        *("--data-dir", str(folder), "--no-progress", "--dataset-version", "odd"),
        result_path=tmp_path / "result.json",
        timeout=60,
    )
    assert [(s["path"], s["reason"]) for s in result["skips"]] == [("2/odd.png", kind)]
    assert result["prepared"] == 30 and result["offered"] == 31


@pytest.mark.timeout(60)
def test_a_fifo_in_a_versions_work_tree_is_not_opened(tmp_path: Path) -> None:
    import hashlib

    work_tree = tmp_path / "images"
    (work_tree / "3").mkdir(parents=True)
    os.mkfifo(work_tree / "3" / "x.png")
    files = VersionFiles(
        {"3/x.png": hashlib.md5(b"x").hexdigest()}, tmp_path / "objects", work_tree
    )
    assert files.read("3/x.png") is None  # not here: the version is fetched through DVC
    with pytest.raises(VersionNotLocal):
        files.read_or_raise("3/x.png")


# 4. every entry accounted for


def test_hidden_entries_are_counted_and_named(
    flywheel_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "images"
    synthesize(folder, count=30, size=8, seed=7)
    (folder / "3" / ".DS_Store").write_bytes(b"finder")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "4" / ".ipynb_checkpoints").mkdir()
    shutil.copy(next((folder / "4").glob("*.png")), folder / "4" / ".ipynb_checkpoints")
    log = log_events(monkeypatch, tmp_path)
    result = prepare_folder(folder)
    assert {s.path: s.reason for s in result.skips} == {
        ".git": "hidden",
        "3/.DS_Store": "hidden",
        "4/.ipynb_checkpoints": "hidden",
    }
    assert result.offered == 33 == result.prepared + result.quarantined + result.skipped
    (event,) = [e for e in events.read_events(log) if e["action"] == "entries_skipped"]
    assert event["reason"] == "hidden" and event["count"] == 3


# 5. quarantine records


def test_quarantine_keeps_one_record_per_path_and_version(
    flywheel_home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    synthesize(folder, count=30, size=8, seed=8)
    for name in ("a.png", "b.png"):
        (folder / "3" / name).write_bytes(b"the same bad bytes")
    prepare_folder(folder, "v1")
    (folder / "3" / "c.png").write_bytes(b"the same bad bytes")
    second = prepare_folder(folder, "v2")
    lake = open_lake(load_settings().lake_uri)
    records = [
        json.loads(lake.read_bytes(key))
        for key in lake.list("quarantine/prepare/")
        if key.endswith("/reason.json")
    ]
    assert sorted((r["dataset_version"], r["path"]) for r in records) == [
        ("v1", "3/a.png"),
        ("v1", "3/b.png"),
        ("v2", "3/a.png"),
        ("v2", "3/b.png"),
        ("v2", "3/c.png"),
    ]
    for item in second.quarantine:  # the result names each record, beside its file's bytes
        assert json.loads(lake.read_bytes(item.record))["path"] == item.path
        copy = item.record.rsplit("/", 1)[0] + "/" + Path(item.path).name
        assert lake.read_bytes(copy) == b"the same bad bytes"


# 6. a write killed midway


def test_a_write_killed_midway_leaves_no_temporary_file(
    flywheel_home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    synthesize(folder, count=30, size=8, seed=9)
    killed_during_savez = (
        "import io, os, signal, sys\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from ml_tasks.core.settings import load_settings\n"
        "from ml_tasks.prepare import prepare\n"
        "real_savez = np.savez\n"
        "def savez(fh, **arrays):  # the caches' archives are built in memory: left alone\n"
        "    if isinstance(fh, io.BytesIO):\n"
        "        return real_savez(fh, **arrays)\n"
        "    fh.write(b'half an archive'); fh.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "np.savez = savez\n"
        "prepare(load_settings(), data_dir=Path(sys.argv[1]), dataset_version='test')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", killed_during_savez, str(folder)], cwd=REPO, timeout=120
    )
    assert done.returncode == -signal.SIGKILL
    output = LocalLake(Path(open_lake(load_settings().lake_uri).url("").removeprefix("file://")))
    version_folder = output.root / "prepared" / "test"
    assert [p for p in version_folder.iterdir() if p.name.endswith(".tmp")]  # the kill left one
    result = prepare_folder(folder)
    assert sorted(p.name for p in version_folder.iterdir()) == [
        "data.npz",
        "metadata.csv",
        "summary.json",
    ]
    assert len(prepared_hashes("test")) == result.prepared == 30


def test_a_write_in_progress_is_never_taken_for_a_stale_one(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "lake")
    inside, release = threading.Event(), threading.Event()

    def slow_writer() -> None:
        with lake.writer("prepared/v/data.npz") as fh:
            fh.write(b"first")
            inside.set()
            release.wait(30)

    first = threading.Thread(target=slow_writer)
    first.start()
    assert inside.wait(30)
    second = threading.Thread(target=lake.write_bytes, args=("prepared/v/data.npz", b"second"))
    second.start()
    second.join(0.5)
    assert second.is_alive()  # waits for the first writer: its temporary file is not touched
    release.set()
    first.join(30)
    second.join(30)
    assert lake.read_bytes("prepared/v/data.npz") == b"second"
    assert sorted(p.name for p in (tmp_path / "lake" / "prepared" / "v").iterdir()) == ["data.npz"]
