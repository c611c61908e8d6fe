"""Files prepare cannot use are quarantined with their reason, a copy of an image under one
label is a duplicate, and the same verdicts come from the caches on a re-run."""

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ml_tasks.core.lake import open_lake
from ml_tasks.core.settings import load_settings
from ml_tasks.data.prepared_writer import PrepareResult
from ml_tasks.data.synthetic import synthesize
from ml_tasks.prepare import prepare


def prepare_dir(folder: Path) -> PrepareResult:
    return prepare(load_settings(), data_dir=folder, dataset_version="test")


def bad_files(folder: Path) -> dict[str, str]:
    """One file per kind of bad input, with the reason prepare must give."""

    def save(rel: str, data: bytes) -> None:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def encoded(mode: str, size: tuple[int, int], fmt: str = "PNG") -> bytes:
        buffer = io.BytesIO()
        Image.new(mode, size).save(buffer, format=fmt)
        return buffer.getvalue()

    good = encoded("L", (8, 8))
    frames = [Image.new("L", (8, 8), c) for c in (0, 255)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    cases = {
        "3/empty.png": (b"", "empty"),
        "3/truncated.png": (encoded("L", (64, 64))[:60], "truncated"),
        "3/notes.png": (b"hello, not an image", "not_an_image"),
        "3/animated.gif": (gif.getvalue(), "animated"),
        "3/deep.png": (encoded("I;16", (8, 8)), "unsupported_mode"),
        "3/cmyk.jpg": (encoded("CMYK", (8, 8), "JPEG"), "unsupported_mode"),
        "3/huge.png": (encoded("L", (5000, 4000)), "too_many_pixels"),
        "cat/good.png": (good, "unknown_class"),
        "loose.png": (encoded("L", (9, 9)), "no_class_folder"),
    }
    for rel, (data, _) in cases.items():
        save(rel, data)
    return {rel: reason for rel, (_, reason) in cases.items()}


def test_bad_images_go_to_quarantine_with_their_reason(
    flywheel_home: Path, digits_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = digits_copy
    expected = bad_files(folder)
    # the same digit filed under two classes: neither copy is trusted
    some_digit = next((folder / "1").iterdir())
    shutil.copy(some_digit, folder / "7" / "copy-of-a-one.png")
    expected["7/copy-of-a-one.png"] = "label_conflict"
    expected[f"1/{some_digit.name}"] = "label_conflict"
    # ...and twice under the same class (hex names sort before "twin"): a duplicate
    shutil.copy(next((folder / "3").glob("*.png")), folder / "3" / "twin.png")
    expected["3/twin.png"] = "duplicate"

    params_path = tmp_path / "params.yaml"
    params_path.write_text(
        (Path(load_settings().params_path).read_text()).replace(
            "max_pixels: 16777216", "max_pixels: 10000000"
        )
    )
    monkeypatch.setenv("FLYWHEEL_PARAMS", str(params_path))
    result = prepare_dir(folder)
    got = {q.path: q.reason for q in result.quarantine}
    assert got == expected
    added = len(expected) - 1  # one of the conflicting copies is a digit of the 1797
    assert result.prepared + result.quarantined == result.images_in == 1797 + added
    lake = open_lake(load_settings().lake_uri)
    for item in result.quarantine:
        base = item.record.rsplit("/", 1)[0]
        assert json.loads(lake.read_bytes(item.record))["reason"] == item.reason
        assert (
            lake.read_bytes(f"{base}/{Path(item.path).name}") == (folder / item.path).read_bytes()
        )
    # a re-run (everything known from the caches) reaches the same verdicts
    again = prepare_dir(folder)
    assert again.decoded == 0
    assert again.quarantine == result.quarantine
    assert again.by_class == result.by_class


def test_a_copy_in_the_same_class_folder_is_a_duplicate_on_every_run(
    flywheel_home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    synthesize(folder, count=30, size=8, seed=4)
    shutil.copy(next((folder / "2").glob("*.png")), folder / "2" / "twin.png")
    for _ in range(2):  # decoding everything, then everything from the caches
        result = prepare_dir(folder)
        assert [(q.path, q.reason) for q in result.quarantine] == [("2/twin.png", "duplicate")]
        assert result.prepared == 30 and result.images_in == 31
