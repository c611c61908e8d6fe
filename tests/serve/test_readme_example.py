"""The README's model-service example, run as written (only its port moved to a free one):
start the service, ask whether it is ready, send it a digit with curl."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from ml_tasks.data.images import encode_png
from tests.readme_commands import REPO, blocks
from tests.serve.conftest import RegisteredModel
from tests.servers import free_port


def test_the_readme_serve_example_answers(tmp_path: Path, registered: RegisteredModel) -> None:
    [block] = [b for b in blocks() if any("ml_tasks.serve --http-port" in c for c in b)]
    start, *asks = block
    assert start.endswith("&") and all(c.startswith("curl ") for c in asks), block
    port = str(free_port())
    # A folder laid out like a clone after `make demo`: the environments and one digit image.
    (tmp_path / ".venvs").symlink_to(REPO / ".venvs")
    digit = tmp_path / "data" / "images" / "3"
    digit.mkdir(parents=True)
    (digit / "a.png").write_bytes(encode_png(registered.test_images[0]))
    env = {
        **os.environ,
        "FLYWHEEL_HOME": str(tmp_path / ".flywheel"),
        "MLFLOW_TRACKING_URI": registered.tracking_uri,
        "FLYWHEEL_LAKE_URI": (tmp_path / "lake").as_uri(),
    }
    server = subprocess.Popen(
        ["bash", "-c", "exec " + start.replace("8085", port).removesuffix("&")],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        ready = f"http://127.0.0.1:{port}/v2/health/ready"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(ready, timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        assert shutil.which("curl"), "the README's example needs curl"
        answers = []
        for ask in asks:
            done = subprocess.run(
                ["bash", "-c", ask.replace("8085", port)],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            answers.append(json.loads(done.stdout))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert answers[0].get("ready") is True, answers[0]
    [prediction] = answers[1]["predictions"]
    assert prediction["label"] in registered.classes, answers[1]
    assert answers[1]["model_version"] == registered.version
