"""A dataset version is prepared from DVC's record of it: files known by md5, new ones read from
DVC's cache or the work tree only when their md5 is the recorded one."""

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from ml_tasks.core.lake import open_lake
from ml_tasks.core.settings import load_settings
from ml_tasks.data.prepare_cache import DecodeCache
from ml_tasks.data.synthetic import synthesize


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
