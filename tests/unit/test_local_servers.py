import sys
from pathlib import Path

import pytest

from tools.local_servers import free_port, running_server


def test_a_server_is_ready_inside_the_block_and_stopped_after(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with running_server(
        command,
        health_url=f"http://127.0.0.1:{port}/",
        log_path=tmp_path / "http.log",
        cwd=tmp_path,
    ) as proc:
        assert proc.poll() is None
    assert proc.poll() is not None


def test_a_server_that_dies_fails_with_the_end_of_its_log(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('no such model: champion'); sys.exit(3)"]
    with (
        pytest.raises(RuntimeError, match="exited before answering") as failed,
        running_server(
            command,
            health_url=f"http://127.0.0.1:{free_port()}/",
            log_path=tmp_path / "logs" / "dead.log",
            timeout=30,
        ),
    ):
        pytest.fail("the block must not run")
    assert "no such model: champion" in str(failed.value)
