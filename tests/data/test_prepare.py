import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
    flywheel_home: Path, digits_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    shutil.copytree(digits_dir, folder)
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


def test_a_file_rewritten_in_place_is_read_again(
    flywheel_home: Path, digits_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    shutil.copytree(digits_dir, folder)
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
    flywheel_home: Path, digits_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    shutil.copytree(digits_dir, folder)
    first = prepare_dir(folder)
    (index,) = (flywheel_home / "cache" / "prepare" / "file-index").glob("*.npz")
    index.write_bytes(b"PK\x03\x04 half a zip file")
    again = prepare_dir(folder)
    assert again.prepared == first.prepared and again.from_cache == first.prepared
    assert again.decoded == 0  # every file read and hashed again, none decoded again


def test_a_new_image_size_decodes_files_the_index_already_knows(
    flywheel_home: Path, digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "images"
    shutil.copytree(digits_dir, folder)
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
    flywheel_home: Path, digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DecodeCache, "MAX_SHARDS", 2)
    folder = tmp_path / "images"
    shutil.copytree(digits_dir, folder)
    prepare_dir(folder)
    for seed in range(3):  # one new shard per run with new images
        synthesize(folder, count=5, size=8, seed=100 + seed)
        prepare_dir(folder)
    shards = list((flywheel_home / "cache" / "prepare" / f"s8-{CACHE_FORMAT}").glob("*.npz"))
    assert len(shards) <= 2
    again = prepare_dir(folder)
    assert again.decoded == 0 and again.from_cache == 1797 + 15


def test_an_image_keeps_its_split_when_the_dataset_grows(
    flywheel_home: Path, digits_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    shutil.copytree(digits_dir, folder)
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
    flywheel_home: Path, digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "images"
    shutil.copytree(digits_dir, folder)
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


def test_a_version_is_prepared_from_its_record_whatever_the_work_tree_holds(
    flywheel_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from ml_tasks.core.settings import load_params
    from ml_tasks.data.dvc import VersionFiles, VersionNotLocal
    from ml_tasks.data.prepare_images import prepare_images

    folder, objects = tmp_path / "images", tmp_path / "dvc-objects"
    synthesize(folder, count=30, size=8, seed=5)
    files = sorted(p for p in folder.rglob("*.png"))

    def md5(data: bytes) -> str:
        return hashlib.md5(data).hexdigest()

    manifest = {p.relative_to(folder).as_posix(): md5(p.read_bytes()) for p in files}
    (folder / "3" / ".DS_Store").write_bytes(b"finder")  # DVC records it; prepare skips it
    manifest["3/.DS_Store"] = md5(b"finder")
    settings = load_settings()
    lake = open_lake(settings.lake_uri)

    def run(version: str, files: VersionFiles) -> dict:
        prepared = prepare_images(
            files,
            dataset_version=version,
            lake=lake,
            cache_dir=tmp_path / "cache",
            params=load_params(settings.params_path)["prepare"],
        )
        return {
            "decoded": prepared.decoded,
            "pixels": prepared.pixels,
            "in": prepared.images_in,
            "skipped": [(s.path, s.reason) for s in prepared.skipped],
        }

    first = run("v1", VersionFiles(manifest, objects, folder))
    assert first["decoded"] == 30 and first["in"] == 30
    assert first["skipped"] == [("3/.DS_Store", "hidden")]
    # seen before: prepared from the caches by md5, without opening a file (none are left)
    folder.rename(tmp_path / "moved")
    again = run("v1-again", VersionFiles(manifest, objects, folder))
    assert again["decoded"] == 0 and np.array_equal(again["pixels"], first["pixels"])
    (tmp_path / "moved").rename(folder)

    # the work tree rewritten in place: what is prepared is still the version's content
    files[0].write_bytes(files[1].read_bytes())
    edited = run("v1-edited", VersionFiles(manifest, objects, folder))
    assert np.array_equal(edited["pixels"], first["pixels"])

    # a new file recorded with other content than the work tree's: refused, nothing written
    # (not even the broken file beside it, which would be quarantined)
    new_bytes = (tmp_path / "moved-never").as_posix().encode()  # anything but that file
    (folder / "3" / "broken.png").write_bytes(b"broken")
    grown = {**manifest, "3/new.png": md5(new_bytes), "3/broken.png": md5(b"broken")}
    shutil.copy(files[2], folder / "3" / "new.png")
    before = sorted(lake.list(""))
    with pytest.raises(VersionNotLocal, match="1 file") as missing:
        run("v2", VersionFiles(grown, objects, folder))
    assert missing.value.paths == ["3/new.png"]
    assert sorted(lake.list("")) == before

    # ...and read from DVC's cache of objects when it is there: a broken image, quarantined
    (objects / grown["3/new.png"][:2]).mkdir(parents=True)
    (objects / grown["3/new.png"][:2] / grown["3/new.png"][2:]).write_bytes(new_bytes)
    for version in ("v2", "v2-again"):  # the second time known by md5, read to be copied
        prepared = prepare_images(
            VersionFiles(grown, objects, folder),
            dataset_version=version,
            lake=lake,
            cache_dir=tmp_path / "cache",
            params=load_params(settings.params_path)["prepare"],
        )
        assert [(q.path, q.reason) for q in prepared.quarantined] == [
            ("3/broken.png", "not_an_image"),
            ("3/new.png", "not_an_image"),
        ]
        assert len(prepared.hashes) == 30 and prepared.images_in == 32
    assert prepared.decoded == 0
    quarantined = [k for k in lake.list("quarantine/") if k.endswith("/new.png")]
    assert len(quarantined) == 2  # one record per version
    assert all(lake.read_bytes(key) == new_bytes for key in quarantined)


def test_decode_cache_keeps_md5s_and_statistics_through_shards_and_merges(
    tmp_path: Path,
) -> None:
    from ml_tasks.data.prepare_cache import pixel_stats

    rng = np.random.default_rng(3)
    images = {f"{i:064x}": rng.integers(0, 256, (4, 4), dtype=np.uint8) for i in range(5)}
    cache = DecodeCache.at(tmp_path, 4).load()
    for i, (digest, pixels) in enumerate(images.items()):
        cache.add(digest, f"{i:032x}", pixels)
        if i == 2:
            cache.save()  # two shards: three images, then two
    cache.add_bad("f" * 64, "e" * 32, "truncated", "broken")
    cache.save()
    expected = pixel_stats(np.stack(list(images.values())))

    def check(loaded: DecodeCache) -> None:
        assert loaded.by_md5 == {
            **{f"{i:032x}": digest for i, digest in enumerate(images)},
            "e" * 32: "f" * 64,
        }
        pixels, stats = loaded.gather(list(images))
        assert np.array_equal(pixels, np.stack(list(images.values())))
        assert stats == expected and all(s.count(",") == 2 for s in stats)

    check(DecodeCache.at(tmp_path, 4).load())
    merged = DecodeCache.at(tmp_path, 4).load()
    merged.compact()
    assert len(list(merged.folder.glob("*.npz"))) == 1
    check(DecodeCache.at(tmp_path, 4).load())


def test_an_unreadable_dvc_record_is_reported_and_dvc_asked_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml_tasks.core import events
    from ml_tasks.data.dvc import cached_manifest, dvc_objects

    monkeypatch.setenv("FLYWHEEL_REPO", str(tmp_path))
    log = tmp_path / "events.jsonl"
    monkeypatch.setattr(events._state, "path", log)
    monkeypatch.setattr(events._state, "stream", io.StringIO())
    version = "ab" + "0" * 30
    assert cached_manifest(load_settings(), version) is None  # not here: nothing to report
    assert not log.exists() or not events.read_events(log)
    record = dvc_objects(load_settings()) / "ab" / f"{'0' * 30}.dir"
    record.parent.mkdir(parents=True)
    record.write_text('[{"md5": "x"')  # cut short
    assert cached_manifest(load_settings(), version) is None
    (event,) = events.read_events(log)
    assert event["action"] == "dvc_record_unreadable" and event["dataset_version"] == version
