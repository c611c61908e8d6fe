"""A stand-in for a Kubeflow Pipelines installation in tests: the v2beta1 REST calls used.

Upload a pipeline and a version (multipart IR YAML), list pipelines, versions and experiments
by name, create an experiment, create, get and cancel a run. What a new run does is the
server's ``mode``: ``execute`` runs the uploaded IR with kfp.local (the run's id becomes the
KFP run id the components see), ``succeed``/``fail`` end it at once (storing the result a
component would store in the lake), ``hang`` keeps it RUNNING until cancelled.
``GET /stand-in/state`` returns every run and request, for assertions.

Run it as ``python -m tests.kubeflow.kfp_server --mode execute`` (prints its URL) from the
orchestrator tests, or use :func:`serve` in-process.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.json_http import JsonHandler
from tools.local_servers import stop_process

API = "/apis/v2beta1"
REPO = Path(__file__).resolve().parents[2]


class State:
    def __init__(self, mode: str, error: str) -> None:
        self.mode, self.error = mode, error
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}  # id -> version (with "ir")
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.executing = threading.Lock()  # kfp.local's config is global: one run at a time


def _named(query: dict[str, list[str]]) -> str | None:
    if "filter" not in query:
        return None
    predicates = json.loads(query["filter"][0]).get("predicates") or []
    return next((p["string_value"] for p in predicates if p["key"] == "display_name"), None)


def _uploaded(body: bytes, content_type: str) -> bytes:
    boundary = content_type.split("boundary=")[1].encode()
    part = body.split(b"--" + boundary)[1]
    return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]


def _finish(state: State, run: dict[str, Any], status: str, error: str = "") -> None:
    with state.lock:
        if run["state"] in ("CANCELING", "CANCELED"):
            run["state"] = "CANCELED"
        else:
            run["state"] = status
            if error:
                run["error"] = {"code": 2, "message": error}
        run["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _store(run_id: str, task: str, result: dict[str, Any]) -> None:
    from ml_tasks.pipelines.runtime import store_result

    store_result(run_id, task, result)


def _execute(state: State, run: dict[str, Any], ir: bytes) -> None:
    import tempfile

    from kfp.local import placeholder_utils

    from ml_tasks.core.settings import load_settings
    from ml_tasks.pipelines.local import run_ir

    original = placeholder_utils.make_random_id
    ids = iter([run["run_id"]])
    with state.executing:
        # The first id kfp.local draws is the pipeline job's: make it this run's id.
        placeholder_utils.make_random_id = lambda: next(ids, None) or original()  # type: ignore[method-assign]
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "pipeline.yaml"
                path.write_bytes(ir)
                root = load_settings().home / "kfp-stand-in"
                run_ir(path, run["runtime_config"].get("parameters", {}), pipeline_root=root)
            _finish(state, run, "SUCCEEDED")
        except Exception as exc:  # the run's error, as KFP reports a failed run
            _finish(state, run, "FAILED", str(exc)[-2000:])
        finally:
            placeholder_utils.make_random_id = original  # type: ignore[method-assign]


def _start(state: State, run: dict[str, Any], version: dict[str, Any]) -> None:
    name = state.pipelines[version["pipeline_id"]]["display_name"]
    task = name.removeprefix("flywheel-step-").replace("-", "_")
    run_id = run["run_id"]
    if state.mode == "execute":
        threading.Thread(target=_execute, args=(state, run, version["ir"]), daemon=True).start()
    elif state.mode == "succeed":
        _store(run_id, task, {"status": "ok", "exit_code": 0, "kfp_run_id": run_id, "step": task})
        _finish(state, run, "SUCCEEDED")
    elif state.mode == "fail":
        code = 3 if "exited 3" in state.error else 1
        _store(run_id, task, {"status": "failed", "exit_code": code, "error": state.error})
        _finish(state, run, "FAILED", state.error)


class Handler(JsonHandler):
    state: State

    def do_GET(self) -> None:
        url, s = urlparse(self.path), self.state
        query = parse_qs(url.query)
        s.calls.append(f"GET {url.path}")
        name = _named(query)
        if url.path == "/stand-in/state":
            return self.reply(200, {"runs": s.runs, "calls": s.calls})
        if url.path == f"{API}/pipelines":
            found = [p for p in s.pipelines.values() if name in (None, p["display_name"])]
            return self.reply(200, {"pipelines": found} if found else {})
        if m := re.fullmatch(f"{API}/pipelines/([^/]+)/versions", url.path):
            found = [
                {k: v for k, v in ver.items() if k != "ir"}
                for ver in s.versions.values()
                if ver["pipeline_id"] == m[1] and name in (None, ver["display_name"])
            ]
            return self.reply(200, {"pipeline_versions": found} if found else {})
        if url.path == f"{API}/experiments":
            found = [e for e in s.experiments.values() if name in (None, e["display_name"])]
            return self.reply(200, {"experiments": found} if found else {})
        if m := re.fullmatch(f"{API}/runs/([^/:]+)", url.path):
            if m[1] not in s.runs:
                return self.reply(404, {"code": 5, "message": f"run {m[1]} not found"})
            return self.reply(200, s.runs[m[1]])
        self.reply(404, {"code": 5, "message": f"no route {url.path}"})

    def _add_version(self, pipeline_id: str, name: str, body: bytes) -> str:
        """Store an uploaded pipeline's IR as a new version of ``pipeline_id``; its id."""
        vid = uuid.uuid4().hex
        self.state.versions[vid] = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": vid,
            "display_name": name,
            "ir": _uploaded(body, self.headers["Content-Type"]),
        }
        return vid

    def do_POST(self) -> None:
        url, s = urlparse(self.path), self.state
        query = parse_qs(url.query)
        body = self.body()
        s.calls.append(f"POST {url.path}")
        if url.path == f"{API}/pipelines/upload":
            pid = uuid.uuid4().hex
            s.pipelines[pid] = {"pipeline_id": pid, "display_name": query["name"][0]}
            self._add_version(pid, query["name"][0], body)
            return self.reply(200, s.pipelines[pid])
        if url.path == f"{API}/pipelines/upload_version":
            vid = self._add_version(query["pipelineid"][0], query["name"][0], body)
            return self.reply(200, {k: v for k, v in s.versions[vid].items() if k != "ir"})
        if url.path == f"{API}/experiments":
            eid = uuid.uuid4().hex
            s.experiments[eid] = {**json.loads(body), "experiment_id": eid}
            return self.reply(200, s.experiments[eid])
        if url.path == f"{API}/runs":
            payload = json.loads(body)
            version = s.versions[payload["pipeline_version_reference"]["pipeline_version_id"]]
            run_id = uuid.uuid4().hex[:12]
            run = {**payload, "run_id": run_id, "state": "RUNNING", "error": None}
            s.runs[run_id] = run
            _start(s, run, version)
            return self.reply(200, run)
        if m := re.fullmatch(f"{API}/runs/([^/:]+):cancel", url.path):
            run = s.runs[m[1]]
            with s.lock:
                if run["state"] not in ("SUCCEEDED", "FAILED", "CANCELED"):
                    run["state"] = "CANCELING" if s.mode == "execute" else "CANCELED"
            return self.reply(200, {})
        self.reply(404, {"code": 5, "message": f"no route {url.path}"})


@contextmanager
def serve(mode: str = "execute", error: str = "", port: int = 0) -> Iterator[tuple[str, State]]:
    """A stand-in KFP on 127.0.0.1; yields its URL and state."""
    state = State(mode, error)
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def serve_in_process(
    python: str, mode: str, log: Path, error: str = "", env: dict[str, str] | None = None
) -> Iterator[str]:
    """The stand-in in a process of its own (``python``: the steps interpreter, for kfp.local),
    logging to ``log`` (kfp.local is verbose); yields its URL."""
    command = [python, "-m", "tests.kubeflow.kfp_server", "--mode", mode]
    if error:
        command += ["--error", error]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, text=True
        )
    try:
        deadline = time.monotonic() + 60
        while not (first := log.read_text().split("\n", 1)[0]).startswith("http"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stand-in KFP server did not start: {log.read_text()}")
            time.sleep(0.1)
        yield first.strip()
    finally:
        stop_process(proc, timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="execute", choices=["execute", "succeed", "fail", "hang"])
    parser.add_argument("--error", default="step train exited 3 (bad input, do not retry): bad")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with serve(args.mode, args.error, args.port) as (url, _):
        print(url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
