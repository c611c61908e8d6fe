"""A small client of Kubeflow Pipelines' v2beta1 REST API: the calls Flywheel makes.

Standard library only, so the Airflow side (where kfp cannot be installed) uses it too, and no
kfp import. Settings come from the environment:

- ``FLYWHEEL_KFP_HOST``: the API's base URL, as ``kfp.Client(host=...)`` takes it
  (``http://ml-pipeline-ui.kubeflow`` or a port-forward ``http://127.0.0.1:8080``);
- ``FLYWHEEL_KFP_UI_URL``: the UI's base URL for run links (default: the host);
- ``FLYWHEEL_KFP_NAMESPACE``: the profile namespace (multi-user installations);
- ``FLYWHEEL_KFP_TOKEN`` or ``FLYWHEEL_KFP_TOKEN_FILE``: a bearer token (a service account's
  projected token file, re-read at every request since it rotates), else
  ``FLYWHEEL_KFP_KUBECONFIG``: the token (``token`` or ``tokenFile``) of the kubeconfig's
  current user (exec and auth-provider plugins are not run);
- ``FLYWHEEL_KFP_EXPERIMENT`` (default ``flywheel``).

A server that does not answer raises :class:`KfpUnavailable` (retry later); an error answer
raises :class:`KfpError` with KFP's message.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

API = "/apis/v2beta1"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"}


class KfpError(RuntimeError):
    """KFP answered with an error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"KFP answered {status}: {message}")
        self.status = status


class KfpUnavailable(ConnectionError):
    """Nothing answered at the KFP endpoint (down, wrong address, timeout): retry later."""


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name) or default


@dataclass(frozen=True)
class KfpSettings:
    host: str = field(default_factory=lambda: _env("FLYWHEEL_KFP_HOST"))
    ui_url: str = field(default_factory=lambda: _env("FLYWHEEL_KFP_UI_URL"))
    namespace: str = field(default_factory=lambda: _env("FLYWHEEL_KFP_NAMESPACE"))
    token: str = field(default_factory=lambda: _env("FLYWHEEL_KFP_TOKEN"))
    token_file: str = field(default_factory=lambda: _env("FLYWHEEL_KFP_TOKEN_FILE"))
    experiment: str = field(default_factory=lambda: _env("FLYWHEEL_KFP_EXPERIMENT", "flywheel"))
    kubeconfig: str = field(default_factory=lambda: _env("FLYWHEEL_KFP_KUBECONFIG"))
    timeout: float = 30.0

    def run_url(self, run_id: str) -> str:
        return f"{(self.ui_url or self.host).rstrip('/')}/#/runs/details/{run_id}"

    def bearer(self) -> str:
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        if self.token or not self.kubeconfig:
            return self.token
        return kubeconfig_token(Path(self.kubeconfig))


def kubeconfig_token(path: Path) -> str:
    """The bearer token of a kubeconfig's current context's user."""
    import yaml

    config = yaml.safe_load(path.read_text()) or {}
    contexts = {c["name"]: c.get("context") or {} for c in config.get("contexts") or []}
    user_name = contexts.get(config.get("current-context", ""), {}).get("user")
    users = {u["name"]: u.get("user") or {} for u in config.get("users") or []}
    user = users.get(user_name or "", {})
    if user.get("token"):
        return str(user["token"])
    if user.get("tokenFile"):
        return Path(user["tokenFile"]).read_text().strip()
    raise KfpError(
        0,
        f"the current user ({user_name}) of {path} has no token or tokenFile (exec and "
        "auth-provider plugins are not run): set FLYWHEEL_KFP_TOKEN or FLYWHEEL_KFP_TOKEN_FILE",
    )


class KfpClient:
    """The v2beta1 calls used: pipelines and versions, experiments, runs."""

    def __init__(self, settings: KfpSettings | None = None) -> None:
        self.settings = settings or KfpSettings()
        if not self.settings.host:
            raise KfpError(0, "no KFP endpoint: set FLYWHEEL_KFP_HOST (e.g. http://127.0.0.1:8080)")

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        url = self.settings.host.rstrip("/") + API + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", content_type)
        if token := self.settings.bearer():
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                text = json.loads(text).get("message") or text
            raise KfpError(exc.code, text.strip()[:2000]) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise KfpUnavailable(
                f"the KFP API at {self.settings.host} did not answer ({reason}): check that it "
                "is up and FLYWHEEL_KFP_HOST is right; a retry may succeed"
            ) from exc
        loaded: dict[str, Any] = json.loads(raw) if raw.strip() else {}
        return loaded

    def _json(self, method: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self._request(method, path, body=json.dumps(payload).encode())

    def _upload(self, path: str, query: dict[str, str], ir: bytes) -> dict[str, Any]:
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="uploadfile"; '
                f'filename="pipeline.yaml"\r\nContent-Type: application/x-yaml\r\n\r\n'
            ).encode()
            + ir
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return self._request(
            "POST",
            path,
            query=query,
            body=body,
            content_type=f"multipart/form-data; boundary={boundary}",
        )

    @staticmethod
    def _named(name: str) -> dict[str, str]:
        predicate = {"key": "display_name", "operation": "EQUALS", "string_value": name}
        return {"filter": json.dumps({"predicates": [predicate]})}

    def _namespaced(self, query: dict[str, str]) -> dict[str, str]:
        return {**query, "namespace": self.settings.namespace} if self.settings.namespace else query

    def ensure_pipeline_version(self, name: str, version: str, ir: bytes) -> dict[str, Any]:
        """Upload ``ir`` as pipeline ``name`` version ``version``, or reuse the one there."""
        found = self._request("GET", "/pipelines", query=self._namespaced(self._named(name)))
        pipelines = found.get("pipelines") or []
        if not pipelines:
            created = self._upload("/pipelines/upload", self._namespaced({"name": name}), ir)
            pipelines = [created]
        pipeline_id = str(pipelines[0]["pipeline_id"])
        versions = (
            self._request(
                "GET", f"/pipelines/{pipeline_id}/versions", query=self._named(version)
            ).get("pipeline_versions")
            or []
        )
        if versions:
            return {**versions[0], "reused": True}
        made = self._upload(
            "/pipelines/upload_version", {"pipelineid": pipeline_id, "name": version}, ir
        )
        return {**made, "reused": False}

    def ensure_experiment(self, name: str) -> str:
        found = self._request("GET", "/experiments", query=self._namespaced(self._named(name)))
        if experiments := found.get("experiments") or []:
            return str(experiments[0]["experiment_id"])
        payload: dict[str, Any] = {"display_name": name}
        if self.settings.namespace:
            payload["namespace"] = self.settings.namespace
        return str(self._json("POST", "/experiments", payload)["experiment_id"])

    def create_run(
        self,
        display_name: str,
        version: dict[str, Any],
        parameters: dict[str, Any],
        experiment_id: str,
    ) -> dict[str, Any]:
        return self._json(
            "POST",
            "/runs",
            {
                "display_name": display_name,
                "experiment_id": experiment_id,
                "pipeline_version_reference": {
                    "pipeline_id": version["pipeline_id"],
                    "pipeline_version_id": version["pipeline_version_id"],
                },
                "runtime_config": {"parameters": parameters},
            },
        )

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._request("GET", f"/runs/{run_id}")

    def cancel_run(self, run_id: str) -> None:
        self._request("POST", f"/runs/{run_id}:cancel", body=b"{}")


def run_error(run: dict[str, Any]) -> str:
    """The error a finished run reports: its own, else its failed tasks'."""
    error = run.get("error") or {}
    messages = [str(error.get("message"))] if error.get("message") else []
    for task in (run.get("run_details") or {}).get("task_details") or []:
        if (task.get("error") or {}).get("message"):
            messages.append(f"{task.get('display_name')}: {task['error']['message']}")
    return "; ".join(messages) or f"the run ended {run.get('state')}"
