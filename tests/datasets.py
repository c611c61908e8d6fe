"""Dataset set-up the tests share: materialize the work tree's version, add a synthetic one.

Both run in a subprocess with the test's own environment (``FLYWHEEL_REPO``, remotes), as the
DAGs' steps do, so the state they leave is the state a user's clone would have.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from typing import Any


def materialize(env: dict[str, str], python: str = sys.executable) -> dict[str, Any]:
    """``python -m ml_tasks.dataset materialize``: its JSON result (asserts success)."""
    done = subprocess.run(
        [python, "-m", "ml_tasks.dataset", "materialize"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def add_synthetic_version(
    env: dict[str, str], *, count: int, seed: int, when: datetime, python: str = sys.executable
) -> str:
    """``count`` more synthetic images and a dataset version created at ``when``; its id.

    What the ingest DAG records after a batch of labels (the caller commits, as ingest does).
    """
    code = (
        "from datetime import datetime; "
        "from ml_tasks.core.settings import load_settings; "
        "from ml_tasks.data.versions import add_version; "
        "from ml_tasks.data.synthetic import synthesize; "
        f"s = load_settings(); synthesize(s.data_dir, count={count}, seed={seed}); "
        f"print(add_version(s, 'synthetic', when=datetime.fromisoformat('{when.isoformat()}'))"
        ".version)"
    )
    done = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]
