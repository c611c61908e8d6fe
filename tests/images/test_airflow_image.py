"""The Airflow image carries what git-sync does not (defect 5: git-sync ships only dags/, so the
plugins could not be imported).

The official Airflow image it starts from is on Docker Hub, out of reach here, so it cannot be
built on this machine. What it adds on top is checked instead: the files its last stage copies
are laid out as the Dockerfile says, under a throwaway root, and the orchestrator's interpreter,
with the checkout removed from its path and the image's ``ENV`` applied to that root, imports
the plugins and parses every DAG with no import error.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "images" / "airflow" / "Dockerfile"
ORCHESTRATOR_PY = REPO / ".venvs" / "orchestrator" / "bin" / "python"


def final_stage(text: str) -> list[tuple[str, str]]:
    """The instructions of the Dockerfile's last stage, continuation lines joined."""
    joined = text.replace("\\\n", " ")
    lines = [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.startswith("#")]
    last = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines[last + 1 :]]


def lay_out(root: Path) -> dict[str, str]:
    """Copy what the last stage COPYs (from the build context) under ``root``; its ENV."""
    env: dict[str, str] = {}
    for instruction, rest in final_stage(DOCKERFILE.read_text()):
        if instruction == "COPY" and "--from=" not in rest:
            *sources, dest = [a for a in shlex.split(rest) if not a.startswith("--")]
            for source in sources:
                target = root / dest.lstrip("/")
                if (REPO / source).is_dir():
                    shutil.copytree(
                        REPO / source,
                        target,
                        dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"),
                    )
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(REPO / source, target)
        elif instruction == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_the_image_imports_its_plugins_and_parses_every_dag_without_the_checkout(
    tmp_path: Path,
) -> None:
    image_env = lay_out(tmp_path)

    def inside(path: str) -> str:
        return ":".join(str(tmp_path / p.lstrip("/")) for p in path.split(":"))

    dags = tmp_path / "opt" / "airflow" / "dags"
    plugins = image_env.get("AIRFLOW__CORE__PLUGINS_FOLDER", "/opt/airflow/plugins")
    script = f"""
import json, sys
repo = {str(REPO)!r}
sys.path[:] = [p for p in sys.path if p.rstrip("/") not in (repo, repo + "/plugins")]
sys.path[:0] = {inside(image_env.get("PYTHONPATH", "")).split(":")!r}
import flywheel_airflow, ml_tasks
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(dags)!r})
errors = {{k: str(v)[:500] for k, v in bag.import_errors.items()}}
print(json.dumps({{"errors": errors, "dags": sorted(bag.dag_ids),
    "plugins": flywheel_airflow.__file__, "ml_tasks": ml_tasks.__file__}}))
"""
    home = tmp_path / "airflow-home"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": inside(plugins),
        "FLYWHEEL_HOME": str(tmp_path / "flywheel"),
    }
    done = subprocess.run(
        [str(ORCHESTRATOR_PY), "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["errors"] == {}
    assert {"training", "flywheel_intake", "flywheel_ingest"} <= set(report["dags"])
    assert report["plugins"].startswith(str(tmp_path)), report  # from the image, not the checkout
    assert report["ml_tasks"].startswith(str(tmp_path)), report
