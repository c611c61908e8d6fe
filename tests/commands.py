"""Run a step as its command (``python -m ml_tasks.<step> ... --result-path``), read its result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO


def step_result(
    module: str, *args: str, result_path: Path, python: str = sys.executable, timeout: float = 300
) -> dict[str, Any]:
    """The JSON result of a step run from the repository; a non-zero exit fails with its stderr."""
    done = subprocess.run(
        [python, "-m", module, *args, "--result-path", str(result_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result
