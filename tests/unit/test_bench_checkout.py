"""The benchmarks' guard: any file of a checkout that changes is named (ignored ones too)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.checkout import changes, fingerprint


def test_a_changed_ignored_file_a_new_file_and_a_commit_are_all_named(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main", str(tmp_path)], check=True)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config.local").write_text("[remote]\n")  # ignored by git, still kept
    (tmp_path / ".venvs").mkdir()
    (tmp_path / "__pycache__").mkdir()
    before = fingerprint(tmp_path)
    (tmp_path / ".venvs" / "x").write_text("an environment changes")  # left out
    (tmp_path / "__pycache__" / "m.pyc").write_text("bytecode")  # left out
    assert changes(before, fingerprint(tmp_path)) == []

    (tmp_path / ".dvc" / "config.local").write_text("['remote \"minio\"']\n")
    (tmp_path / "data.txt").write_text("new")
    found = changes(before, fingerprint(tmp_path))
    assert found == ["added   data.txt", "changed .dvc/config.local"]

    subprocess.run(["git", "add", "data.txt"], cwd=tmp_path, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
        cwd=tmp_path,
        check=True,
    )
    assert "changed <git HEAD>" in changes(before, fingerprint(tmp_path))
