"""The local stack: every service of the loop on this machine, started and stopped in one go.

``python -m tools.stack up`` starts, on 127.0.0.1 at fixed ports (:data:`PORTS`; each can be
moved with its environment variable, and a port already taken stops ``up`` with its name and
variable):

- a local S3 endpoint (:mod:`tools.local_s3`: moto's S3, every acknowledged write kept on
  disk) with the lake bucket, which also holds the DVC remote;
- MLflow (SQLite + served artifacts);
- Label Studio (its own virtualenv, preset admin and API token, safe SSRF settings);
- a container registry (:mod:`tools.registry`: Debian's ``docker-registry``, the CNCF
  distribution registry) where ``make push`` sends the images and a kubelet would pull them,
  when ``docker-registry`` is installed (``make image-tools``);
- the model service (``python -m ml_tasks.serve``, ``--no-serve`` skips it), which follows
  the ``champion`` alias: without one yet it is live but not ready, says why on its readiness
  route, and serves the first champion as soon as there is one;
- Airflow: api-server (UI), scheduler, triggerer and dag-processor, with Connections for S3
  and Label Studio, low parallelism, and three logins: ``admin``, ``approver`` (the one user
  in ``FLYWHEEL_APPROVERS``, who answers the training DAG's approval) and ``non-approver`` (the
  same role, not an approver: answering an approval gets 403);

then prints the URLs, logins, and the environment to copy into a shell
(``python -m tools.stack env``). ``python -m tools.stack down`` stops all of it
(each service runs in its own process group, recorded in ``<FLYWHEEL_HOME>/stack/state.json``).

Everything the stack holds lives under ``<FLYWHEEL_HOME>/stack`` and ``<FLYWHEEL_HOME>/airflow``
(objects, MLflow's database and artifacts, Label Studio's data, Airflow's database and the
logins' passwords), and the ports do not change, so ``down`` then ``up`` finds it all where it
was, and links already written (an approval form's MLflow links) keep working.

Why here and not under ``plugins/``: it imports neither Airflow nor the ML stack (standard
library only: it starts other programs with their own environments' interpreters), so it runs
from either environment; Airflow imports every module under ``plugins/`` at start-up.
"""

from tools.stack.processes import down
from tools.stack.services import start_model_service, up
from tools.stack.settings import (
    PORTS,
    StackError,
    StackRefused,
    check_ports_free,
    ports,
    stack_env,
)

__all__ = [
    "PORTS",
    "StackError",
    "StackRefused",
    "check_ports_free",
    "down",
    "ports",
    "stack_env",
    "start_model_service",
    "up",
]
