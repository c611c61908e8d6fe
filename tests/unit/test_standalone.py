"""A clone stands alone: nothing tracked refers to a folder beside the repository, and what the
code reads at run time (the KServe CRD) ships inside it, with its source and licence listed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from ml_tasks.serving import inference_service

REPO = Path(__file__).resolve().parents[2]
# Spelt in two pieces so that this file does not name what it forbids.
SIBLING = re.compile(re.escape("..") + r"[/\\]" + "shared")


def tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.decode()
    return [REPO / name for name in out.split("\0") if name]


def test_no_tracked_file_names_a_folder_beside_the_clone() -> None:
    offenders = []
    for path in tracked_files():
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="ignore")
        offenders += [
            f"{path.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}"
            for m in SIBLING.finditer(text)
        ]
    assert not offenders, f"these lines read outside the repository: {offenders}"


def test_the_check_above_catches_a_sibling_path() -> None:
    assert SIBLING.search('Path(__file__).parents[2] / "..' + '/shared/schemas"')
    assert not SIBLING.search("counts live in shared memory; see ./shared_state.py")


def test_crd_ships_inside_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLYWHEEL_SCHEMAS_DIR", raising=False)
    folder = inference_service.schemas_dir().resolve()
    assert folder.is_relative_to(REPO / "ml_tasks")
    assert inference_service.crd_schema()["properties"]["kind"]["type"] == "string"
    tracked = {p.relative_to(REPO).as_posix() for p in tracked_files()}
    assert (folder / inference_service.CRD_FILE).relative_to(REPO).as_posix() in tracked


def test_every_vendored_file_is_listed_in_notice() -> None:
    notice = (REPO / "NOTICE").read_text()
    assert "Apache License" in (REPO / "LICENSE").read_text()
    vendored = [
        p
        for p in tracked_files()
        if p.suffix in {".yaml", ".json"} and "Vendored" in p.read_text(errors="ignore")[:400]
    ]
    assert vendored, "the KServe CRD carries a 'Vendored' header naming its source"
    for path in vendored:
        name = path.relative_to(REPO).as_posix()
        assert name in notice, f"{name} is vendored but NOTICE does not list it"
        block = notice.split(name, 1)[1].split("\n\n", 1)[0]
        for field in ("Source:", "Version:", "Licence:"):
            assert field in block, f"NOTICE gives no {field} for {name}"
