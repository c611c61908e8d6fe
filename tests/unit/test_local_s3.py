"""The stack's S3 endpoint keeps every acknowledged change across a crash (``kill -9``)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig

from ml_tasks.core.lake import s3_objects
from tools.local_servers import free_port, wait_for_http

BUCKET = "lake"


@contextmanager
def endpoint(data_dir: Path, port: int) -> Iterator[Any]:
    """The server on ``port`` with ``data_dir``; killed with SIGKILL (no clean exit) after."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tools.local_s3",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", 60, alive=lambda: proc.poll() is None)
        yield boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="k",
            aws_secret_access_key="s",
            region_name="us-east-1",
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def listing(s3: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_objects(s3, bucket))


def test_every_acknowledged_change_survives_a_kill(tmp_path: Path) -> None:
    data, port = tmp_path / "s3", free_port()
    big = os.urandom(6 * 1024 * 1024)
    with endpoint(data, port) as s3:
        s3.create_bucket(Bucket=BUCKET)
        s3.create_bucket(Bucket="empty")
        s3.create_bucket(Bucket="gone")
        s3.delete_bucket(Bucket="gone")
        s3.put_object(
            Bucket=BUCKET,
            Key="incoming/a b/ü.png",
            Body=b"png",
            ContentType="image/png",
            Metadata={"model_version": "3"},
        )
        s3.put_object(Bucket=BUCKET, Key="a", Body=b"file a")
        s3.put_object(Bucket=BUCKET, Key="a/b", Body=b"file a/b")  # a key and a "folder"
        s3.put_object(Bucket=BUCKET, Key="overwritten", Body=b"old")
        s3.put_object(Bucket=BUCKET, Key="overwritten", Body=b"new")
        s3.copy_object(
            Bucket=BUCKET, Key="copy", CopySource={"Bucket": BUCKET, "Key": "incoming/a b/ü.png"}
        )
        for key in ("deleted", "batch/1", "batch/2"):
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
        s3.delete_object(Bucket=BUCKET, Key="deleted")
        s3.delete_objects(
            Bucket=BUCKET, Delete={"Objects": [{"Key": "batch/1"}, {"Key": "batch/2"}]}
        )
        s3.upload_fileobj(  # multipart: DVC's and Label Studio's big files go this way
            io.BytesIO(big),
            BUCKET,
            "multipart.bin",
            Config=TransferConfig(multipart_threshold=5 * 1024 * 1024),
        )
        before = listing(s3, BUCKET)
    # A write that was never renamed into place (a crash mid-write) is not an object.
    (data / BUCKET / "00").mkdir(parents=True, exist_ok=True)
    (data / BUCKET / "00" / ".half-written.123.tmp").write_bytes(b"garbage")

    with endpoint(data, port) as s3:
        buckets = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
        assert buckets == ["empty", BUCKET]
        assert (
            listing(s3, BUCKET)
            == before
            == [
                "a",
                "a/b",
                "copy",
                "incoming/a b/ü.png",
                "multipart.bin",
                "overwritten",
            ]
        )
        got = s3.get_object(Bucket=BUCKET, Key="incoming/a b/ü.png")
        assert got["Body"].read() == b"png"
        assert got["ContentType"] == "image/png" and got["Metadata"] == {"model_version": "3"}
        assert s3.get_object(Bucket=BUCKET, Key="overwritten")["Body"].read() == b"new"
        assert s3.get_object(Bucket=BUCKET, Key="a")["Body"].read() == b"file a"
        assert s3.get_object(Bucket=BUCKET, Key="multipart.bin")["Body"].read() == big
        assert not list((data / BUCKET).rglob(".*.tmp"))


def test_a_file_it_did_not_write_stops_the_start_with_its_path(tmp_path: Path) -> None:
    data = tmp_path / "s3"
    (data / BUCKET / "ab").mkdir(parents=True)
    (data / BUCKET / ".bucket").write_text('{"name": "lake"}')
    (data / BUCKET / "ab" / "abcdef").write_bytes(b"not json\nbytes")
    done = subprocess.run(
        [sys.executable, "-m", "tools.local_s3", "--data-dir", str(data), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "abcdef is not an object this server wrote" in done.stderr


def test_a_taken_port_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tools.local_s3",
                "--data-dir",
                str(tmp_path),
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1 and f"Port {port} is in use" in done.stderr
