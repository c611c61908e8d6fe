# Flywheel: `make demo` runs the main job on the embedded default; `make test` runs the tests.
# Two environments, as on a cluster: the orchestrator (Airflow) and the steps (torch, MLflow,
# Great Expectations, DVC, Optuna, kfp, kserve). Both install from locked requirements.

PYTHON ?= python3
VENVS := .venvs
STEPS := $(VENVS)/steps
ORCH := $(VENVS)/orchestrator
STEPS_PY := $(CURDIR)/$(STEPS)/bin/python
ORCH_PY := $(CURDIR)/$(ORCH)/bin/python
PIP_FLAGS := -qq --disable-pip-version-check
# pip 23 (Python 3.11's) backtracks for many minutes on these trees; 26.3 resolves in seconds.
PIP_VERSION := pip==26.3

export FLYWHEEL_STEPS_PYTHON ?= $(STEPS_PY)

.PHONY: test-fast browser help envs steps-env orchestrator-env label-studio-env demo chain test lint test-steps \
	test-orchestrator test-images image-tools images push stack-up stack-down bench lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

# A venv is (re)built when its lock changes; the repository joins it through a .pth file, so
# code edits need no reinstall.
# $(call venv,FOLDER,LOCK): a virtualenv at FOLDER from LOCK, with the repository on its path.
define venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install $(PIP_FLAGS) $(PIP_VERSION)
	$(1)/bin/python -m pip install $(PIP_FLAGS) -r $(2)
	$(1)/bin/python -m pip check
	$(1)/bin/python -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'flywheel.pth').write_text('$(CURDIR)\n$(CURDIR)/plugins\n')"
	touch $(1)/.installed
endef

$(STEPS)/.installed: requirements/steps.lock
	$(call venv,$(STEPS),$<)

$(ORCH)/.installed: requirements/orchestrator.lock
	$(call venv,$(ORCH),$<)

# Label Studio pins Django and friends: it gets a virtualenv of its own (tests, local stack).
$(VENVS)/label-studio/.installed: requirements/label-studio.lock
	$(PYTHON) -m venv $(VENVS)/label-studio
	$(VENVS)/label-studio/bin/python -m pip install $(PIP_FLAGS) $(PIP_VERSION)
	$(VENVS)/label-studio/bin/python -m pip install $(PIP_FLAGS) -r requirements/label-studio.lock
	touch $@

steps-env: $(STEPS)/.installed  ## create the steps environment (.venvs/steps)
orchestrator-env: $(ORCH)/.installed  ## create the orchestrator environment (.venvs/orchestrator)
label-studio-env: $(VENVS)/label-studio/.installed  ## create Label Studio's environment
envs: steps-env orchestrator-env  ## create both environments

.PHONY: pipeline
pipeline: steps-env  ## compile the Kubeflow pipeline to .flywheel/pipelines/ and run it here with kfp.local
	$(STEPS_PY) -m ml_tasks.pipelines compile
	$(STEPS_PY) -m ml_tasks.pipelines local

chain: steps-env  ## run the four steps back to back, without Airflow
	$(STEPS_PY) -m ml_tasks.chain

demo: envs  ## run the main job on the embedded default: the training DAG under `airflow dags test`
	$(ORCH_PY) -m tools.demo

lint: envs  ## ruff, mypy (the steps code in its environment, the Airflow code in its own), import contracts
	$(STEPS)/bin/ruff check .
	$(STEPS)/bin/ruff format --check .
	$(STEPS)/bin/mypy ml_tasks tools
	$(STEPS)/bin/hadolint images/*/Dockerfile
	$(ORCH)/bin/mypy plugins tools/demo.py tools/local_airflow.py tools/airflow_cli.py $(wildcard dags/*.py)
	$(ORCH)/bin/lint-imports --no-cache --no-logo  # the import contracts in pyproject.toml

test-steps: steps-env  ## the tests that run in the steps environment
	$(STEPS_PY) -m pytest tests/unit tests/data tests/model tests/integration $(wildcard tests/serve) tests/helm tests/tuning tests/kubeflow tests/docs

# Each suite sets up its own Airflow home before importing Airflow: one pytest process each.
test-orchestrator: envs label-studio-env browser  ## the tests that run in the orchestrator (Airflow) environment
	$(ORCH_PY) -m pytest tests/dags tests/plugins
	$(ORCH_PY) -m pytest tests/annotation

# Built with buildah where no Docker daemon answers (tools/images/); the Debian packages come
# from image-tools. Both images run from copies pulled out of a local registry.
test-images: envs image-tools  ## build, push, pull and run the steps and serve images as their pods run them
	$(STEPS_PY) -m pytest tests/images

test: lint test-steps test-orchestrator test-images  ## lint and run every test

# No server starts in these: settings, events, the lake, prepare and its bad inputs, the checks,
# the Helm values, the gates, the operators and every DAG file's parse. About two minutes.
test-fast: envs  ## the quick loop: the tests that start no server (not marked slow)
	$(STEPS_PY) -m pytest -q -m "not slow" tests/unit tests/data tests/helm
	$(ORCH_PY) -m pytest -q -m "not slow" tests/plugins tests/dags/test_dag_integrity.py

browser:  ## Debian's chromium for the browser tests (apt-get when missing; Playwright downloads nothing)
	@command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)

image-tools:  ## install buildah, docker-registry and debootstrap when one is missing (apt-get; CI runs as root)
	$(PYTHON) -m tools.images tools

images:  ## build the steps, serve and airflow images (Docker, else buildah), tagged with the git revision
	$(PYTHON) -m tools.images build

push:  ## push the built images to the registry project named by REGISTRY and PROJECT (docs/deploy.md)
	$(PYTHON) -m tools.images push

stack-up: envs label-studio-env image-tools  ## start the local stack (S3, MLflow, Label Studio, model service, Airflow)
	$(STEPS_PY) -m tools.stack up

stack-down:  ## stop everything stack-up started
	$(STEPS_PY) -m tools.stack down

bench: envs label-studio-env  ## run the benchmarks and print their table
	$(STEPS_PY) -m bench

lock:  ## re-resolve requirements/*.in into the lock files (needs the package index)
	rm -rf /tmp/flywheel-lock && $(PYTHON) -m venv /tmp/flywheel-lock/steps && $(PYTHON) -m venv /tmp/flywheel-lock/orch
	/tmp/flywheel-lock/steps/bin/pip install $(PIP_FLAGS) $(PIP_VERSION)
	/tmp/flywheel-lock/orch/bin/pip install $(PIP_FLAGS) $(PIP_VERSION)
	/tmp/flywheel-lock/steps/bin/pip install $(PIP_FLAGS) -r requirements/steps.in
	/tmp/flywheel-lock/orch/bin/pip install $(PIP_FLAGS) -r requirements/orchestrator.in
	(echo "# Locked from requirements/steps.in (Python 3.11). Regenerate: make lock"; /tmp/flywheel-lock/steps/bin/pip freeze) > requirements/steps.lock
	(echo "# Locked from requirements/orchestrator.in (Python 3.11). Regenerate: make lock"; /tmp/flywheel-lock/orch/bin/pip freeze) > requirements/orchestrator.lock

clean:  ## remove the embedded state (.flywheel); keeps the environments
	rm -rf .flywheel
