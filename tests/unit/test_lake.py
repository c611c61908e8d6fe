from pathlib import Path

import boto3
import pytest

from ml_tasks.core.lake import Lake, LakeError, open_lake
from tests.servers import s3_server


def exercise(lake: Lake) -> None:
    lake.write_bytes("incoming/a.png", b"one")
    lake.write_bytes("incoming/b.png", b"two")
    lake.write_bytes("other/c.png", b"three")
    assert lake.read_bytes("incoming/a.png") == b"one"
    assert lake.exists("incoming/b.png") and not lake.exists("incoming/zzz.png")
    assert sorted(lake.list("incoming/")) == ["incoming/a.png", "incoming/b.png"]
    lake.copy("incoming/a.png", "annotation/1/a.png")
    assert lake.read_bytes("annotation/1/a.png") == b"one"
    assert lake.size("other/c.png") == 5
    lake.delete("incoming/a.png")
    assert not lake.exists("incoming/a.png")
    with pytest.raises(LakeError):
        lake.read_bytes("incoming/a.png")
    with lake.writer("big/array.bin") as fh:
        fh.write(b"streamed")
    assert lake.read_bytes("big/array.bin") == b"streamed"
    with pytest.raises(RuntimeError), lake.writer("big/half.bin") as fh:
        fh.write(b"half")
        raise RuntimeError("the writer failed midway")
    assert not lake.exists("big/half.bin")  # a failed write leaves no object behind
    assert sorted(lake.list("big/")) == ["big/array.bin"]
    # created once: a second create of the same key changes nothing and says so
    assert lake.create_if_absent("ledger/1.json", b"first")
    assert not lake.create_if_absent("ledger/1.json", b"second")
    assert lake.read_bytes("ledger/1.json") == b"first"
    assert sorted(lake.list("ledger/")) == ["ledger/1.json"]
    lake.delete_many(["incoming/b.png", "other/c.png", "never/written.png"])
    assert not lake.exists("incoming/b.png") and not lake.exists("other/c.png")


def test_local_lake(tmp_path: Path) -> None:
    exercise(open_lake((tmp_path / "lake").as_uri()))


def test_local_lake_refuses_keys_that_escape(tmp_path: Path) -> None:
    lake = open_lake((tmp_path / "lake").as_uri())
    with pytest.raises(LakeError, match="escapes"):
        lake.write_bytes("../outside", b"x")


def test_s3_lake_against_a_real_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with s3_server() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        boto3.client("s3").create_bucket(Bucket="lake")
        exercise(open_lake("s3://lake/flywheel"))


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(LakeError, match="only file:// and s3://"):
        open_lake("gs://bucket")
