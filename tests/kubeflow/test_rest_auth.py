"""The KFP client's credentials: a token, a token file, or a kubeconfig's current user."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_tasks.pipelines.rest import KfpClient, KfpError, KfpSettings
from tests.kubeflow.kfp_server import serve

KUBECONFIG = """
apiVersion: v1
current-context: kfp
contexts:
- name: kfp
  context: {cluster: c, user: alice}
- name: other
  context: {cluster: c, user: bob}
users:
- name: alice
  user: {token: alice-token}
- name: bob
  user: {exec: {command: gke-gcloud-auth-plugin}}
"""


def test_the_bearer_comes_from_the_token_file_then_the_token_then_the_kubeconfig(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config"
    config.write_text(KUBECONFIG)
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    assert KfpSettings(host="h", kubeconfig=str(config)).bearer() == "alice-token"
    assert KfpSettings(host="h", token="t", kubeconfig=str(config)).bearer() == "t"
    assert KfpSettings(host="h", token="t", token_file=str(token_file)).bearer() == "file-token"
    config.write_text(KUBECONFIG.replace("current-context: kfp", "current-context: other"))
    with pytest.raises(KfpError, match="exec and auth-provider plugins are not run"):
        KfpSettings(host="h", kubeconfig=str(config)).bearer()


def test_requests_carry_the_bearer(tmp_path: Path) -> None:
    seen: list[str] = []
    with serve("succeed") as (url, _):
        from tests.kubeflow import kfp_server

        original = kfp_server.Handler.do_GET

        def recording(self: kfp_server.Handler) -> None:
            seen.append(self.headers.get("Authorization", ""))
            original(self)

        kfp_server.Handler.do_GET = recording  # type: ignore[method-assign]
        try:
            KfpClient(KfpSettings(host=url, token="secret")).ensure_experiment("flywheel")
        finally:
            kfp_server.Handler.do_GET = original  # type: ignore[method-assign]
    assert seen == ["Bearer secret"]
