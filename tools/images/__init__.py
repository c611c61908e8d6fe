"""Build, push and run Flywheel's container images: with Docker where a daemon answers, with
buildah (no daemon, no Docker Hub) where it does not.

``python -m tools.images COMMAND`` (``make images``, ``make push`` and the image tests call it):

- ``tools``: install the Debian packages the buildah path needs (buildah, docker-registry,
  debootstrap) when one is missing, after ``apt-get update``.
- ``base``: the Python base image, made once per machine with debootstrap, for the
  Dockerfiles' ``FROM ${PYTHON_IMAGE}`` (the official one is on Docker Hub, out of reach here).
- ``build [NAME...]``: the images (default ``steps serve airflow``), tagged with the git
  revision and labelled (OCI source, revision, created). ``airflow`` starts from the official
  Airflow image: it is skipped, saying why, where that image cannot be pulled.
- ``push [NAME...]``: to ``$REGISTRY/$PROJECT`` as ``$ROBOT_USER`` / ``$ROBOT_TOKEN``: the
  environment, never the repository, holds them.
- ``refs``: the references the images get, as the kubernetes backend reads them.

``steps`` and ``serve`` are ``FROM`` one shared image, ``images/venv`` (the locked steps
environment), built once per lock and base: a code-only change rebuilds the code layers only.
"""

from tools.images.build import IMAGES, Built, airflow_base, build, ensure_base
from tools.images.containers import container, remove_store, run_command, written_outside
from tools.images.engine import buildah, docker_available, ensure_tools, image_exists
from tools.images.push import Registry, pull, push
from tools.images.tags import local_ref, revision

__all__ = [
    "IMAGES",
    "Built",
    "Registry",
    "airflow_base",
    "build",
    "buildah",
    "container",
    "docker_available",
    "ensure_base",
    "ensure_tools",
    "image_exists",
    "local_ref",
    "pull",
    "push",
    "remove_store",
    "revision",
    "run_command",
    "written_outside",
]
