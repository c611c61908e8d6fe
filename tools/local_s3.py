"""A local S3 endpoint that keeps its objects on disk: moto's S3, written through to a folder.

Why this and not another server: no MinIO (nor SeaweedFS, Garage, versitygw) installs from
PyPI or Debian here, and Debian's rclone (1.60) predates ``rclone serve s3`` (1.65). The small
S3 servers on PyPI are untried with the clients the loop depends on. moto's S3 is the endpoint
boto3, Airflow's S3 hook and deferrable sensor, DVC's S3 remote and Label Studio's storages
were all checked against here, but it keeps everything in memory: a restart empties the lake.
So this runs moto's S3 application unchanged and adds what it lacks, durability.

How: a request that changes an object or a bucket is handled by moto; when it succeeded, and
before its response is sent, the object as moto now holds it is written to the data folder
(one file per object: a JSON header line, then the bytes; written to a temporary file,
``fsync``-ed, renamed into place, the folder ``fsync``-ed) or removed from it. An
acknowledged write is therefore on disk, and a crash (even ``kill -9``) loses only requests
that were never answered. At start, before the port opens, the folder is loaded back into moto.
Requests that change the same object are serialised, so the folder ends as moto does.

Kept: buckets, object bytes, content type and the other standard content headers, user
metadata (``x-amz-meta-*``). Not kept: object versions, tags and ACLs, bucket policies, CORS
and notifications, multipart uploads not yet completed, and last-modified times (a restored
object is as new as the restart). Bucket-addressed and path-style requests on 127.0.0.1 are
what every client here sends.

``python -m tools.local_s3 --data-dir DIR --port PORT`` (127.0.0.1 only by default).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import ipaddress
import signal
import sys
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tools.s3_folder import LocalS3Error, ObjectFolder

# A request signed for S3 (moto routes by the signature's service; it does not verify it).
INTERNAL_AUTH = (
    "AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature=0"
)
CONTENT_HEADERS = (
    "content-type",
    "content-encoding",
    "content-disposition",
    "content-language",
    "cache-control",
    "expires",
)
LOCK_STRIPES = 64

StartResponse = Callable[..., Any]


def _query(environ: dict[str, Any]) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)


def _raw_path(environ: dict[str, Any]) -> str:
    """The request path, percent-decoded once, as the client meant it (UTF-8)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return urllib.parse.unquote(urllib.parse.urlsplit(raw).path)
    return str(environ.get("PATH_INFO", "")).encode("latin-1").decode("utf-8")


def _is_ip_or_localhost(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def bucket_and_key(environ: dict[str, Any]) -> tuple[str, str] | None:
    """(bucket, key) a request addresses; key "" for the bucket itself; None for neither."""
    path = _raw_path(environ)
    host = str(environ.get("HTTP_HOST", "")).rsplit(":", 1)[0]
    if host and not _is_ip_or_localhost(host) and "." in host:
        return host.split(".", 1)[0], path.lstrip("/")  # virtual-hosted: bucket.host/key
    bucket, _, key = path.lstrip("/").partition("/")
    return (bucket, key) if bucket else None


class PersistentS3:
    """A WSGI application: moto's S3, with every acknowledged change written to ``folder``."""

    def __init__(self, folder: ObjectFolder) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.test import Client

        self.folder = folder
        self.moto = DomainDispatcherApplication(create_backend_app)
        self.client = Client(self.moto)
        self.locks = [threading.Lock() for _ in range(LOCK_STRIPES)]

    # -- reading and writing moto's state in process --------------------------------------

    def _path(self, bucket: str, key: str = "") -> str:
        path = "/" + urllib.parse.quote(bucket, safe="")
        return path + ("/" + urllib.parse.quote(key, safe="/~") if key else "")

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        from moto.core.request import PRESERVED_HEADER_NAMES_ENVIRON_KEY, environ_key_for_header

        headers = {"Authorization": INTERNAL_AUTH, **kwargs.pop("headers", {})}
        # What moto's request handler does for a socket: keep "x-amz-meta-a_b" spelt so.
        names = {environ_key_for_header(name): name for name in headers if "_" in name}
        return self.client.open(
            path,
            method=method,
            headers=headers,
            environ_overrides={PRESERVED_HEADER_NAMES_ENVIRON_KEY: names},
            **kwargs,
        )

    def restore(self) -> int:
        """Load the folder into moto; returns the number of objects restored."""
        count = 0
        for bucket, objects in self.folder.buckets():
            created = self._call("PUT", self._path(bucket))
            if created.status_code >= 300:
                raise LocalS3Error(f"could not recreate bucket {bucket}: {created.get_data()!r}")
            for key, headers, body in objects:
                put = self._call("PUT", self._path(bucket, key), data=body, headers=headers)
                if put.status_code >= 300:
                    raise LocalS3Error(f"could not restore s3://{bucket}/{key}: {put.status_code}")
                count += 1
        return count

    def sync_object(self, bucket: str, key: str) -> None:
        """Make the folder hold what moto holds for one key (the object, or nothing)."""
        got = self._call("GET", self._path(bucket, key))
        if got.status_code == 404:
            self.folder.drop_object(bucket, key)
            return
        if got.status_code != 200:
            raise LocalS3Error(f"reading back s3://{bucket}/{key} gave HTTP {got.status_code}")
        headers = {
            name: value
            for name, value in got.headers.items()
            if name.lower() in CONTENT_HEADERS or name.lower().startswith("x-amz-meta-")
        }
        self.folder.save_object(bucket, key, headers, got.get_data())

    def sync_bucket(self, bucket: str) -> None:
        if self._call("HEAD", self._path(bucket)).status_code == 200:
            self.folder.save_bucket(bucket)
        else:
            self.folder.drop_bucket(bucket)

    # -- serving ------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        if method not in ("PUT", "POST", "DELETE"):
            return self.moto(environ, start_response)
        if _raw_path(environ).startswith("/moto-api"):
            # moto's reset and state APIs would change memory behind the folder's back.
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"the moto API is disabled on a persistent endpoint\n"]
        target = bucket_and_key(environ)
        if target is None:
            return self.moto(environ, start_response)
        bucket, key = target
        query = _query(environ)
        keys = [key] if key else []
        if not key and method == "POST" and "delete" in query:
            body = self._read_body(environ)
            keys = delete_objects_keys(body)
        stripes = sorted({self._stripe(bucket, k) for k in keys} or {self._stripe(bucket, "")})
        for index in stripes:
            self.locks[index].acquire()
        try:
            status, headers, chunks = self._forward(environ)
            if 200 <= int(status.split()[0]) < 300:
                self._persist(method, bucket, key, keys, query)
        finally:
            for index in reversed(stripes):
                self.locks[index].release()
        start_response(status, headers)
        return chunks

    def _stripe(self, bucket: str, key: str) -> int:
        digest = hashlib.blake2b(f"{bucket}/{key}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") % LOCK_STRIPES

    @staticmethod
    def _read_body(environ: dict[str, Any]) -> bytes:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        return bytes(body)

    def _forward(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], list[bytes]]:
        """Run moto's handler to the end (its whole answer in memory) before answering."""
        answer: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            answer["status"], answer["headers"] = status, headers

        result = self.moto(environ, capture)
        try:
            chunks = [bytes(chunk) for chunk in result]
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return answer["status"], answer["headers"], chunks

    def _persist(
        self, method: str, bucket: str, key: str, keys: list[str], query: dict[str, list[str]]
    ) -> None:
        if not key:
            if "delete" in query:  # DeleteObjects
                for name in keys:
                    self.sync_object(bucket, name)
            elif not query:  # CreateBucket, DeleteBucket; other sub-resources are not kept
                self.sync_bucket(bucket)
            return
        if "uploads" in query or ("uploadId" in query and method != "POST"):
            return  # a multipart upload started, a part added or aborted: no object yet
        self.sync_object(bucket, key)  # PutObject, CopyObject, Complete..., DeleteObject


def delete_objects_keys(body: bytes) -> list[str]:
    """The keys a DeleteObjects request names."""
    root = ET.fromstring(body)
    return [el.text or "" for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Key"]


def serve(data_dir: Path, host: str, port: int) -> None:
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server

    app = PersistentS3(ObjectFolder(data_dir))
    restored = app.restore()
    # A taken port: werkzeug says so ("Port N is in use by another program") and exits 1.
    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
    print(f"S3 on http://{host}:{port}, {restored} objects restored from {data_dir}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.local_s3", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="where objects are kept")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        serve(args.data_dir.resolve(), args.host, args.port)
    except LocalS3Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
