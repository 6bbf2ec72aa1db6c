# The three commands of the README: make setup, make run, make test.
# Python 3.10 exactly (TFX 1.16 needs < 3.11); pyenv's 3.10 is used when `python3.10` is not on PATH.
PYTHON ?= $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10; do \
            $$p -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && { echo $$p; break; }; done)
VENV ?= .venv
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup run test

setup:
	@test -n "$(PYTHON)" || { echo "Python 3.10 is required: install python3.10 (and python3.10-venv)"; exit 1; }
	@# Debian packages: kubectl renders the Kubernetes overlays in the tests (kubernetes-client has kustomize
	@# built in); h2load (nghttp2-client) is the serving benchmark's load generator; graphviz's `dot` draws the run
	@# report's pipeline graph and headless chromium opens the report in its tests.
	missing=""; command -v kubectl >/dev/null 2>&1 || missing="$$missing kubernetes-client"; \
	  command -v h2load >/dev/null 2>&1 || missing="$$missing nghttp2-client"; \
	  command -v dot >/dev/null 2>&1 || missing="$$missing graphviz"; \
	  command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	  test -z "$$missing" || { $(SUDO) apt-get update && $(SUDO) apt-get install -y $$missing; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet pip==24.3.1
	$(VENV)/bin/pip install --quiet -r requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps -e .
	@# The scanner of the manifests and the Dockerfile (tests/test_k8s_scan.py): checkov in its own virtualenv, from
	@# its own lock (its pins conflict with requirements.lock); the '*' .gitignore keeps the venv out of git.
	$(PYTHON) -m venv .venv-scan
	echo '*' > .venv-scan/.gitignore
	.venv-scan/bin/pip install --quiet -r requirements-scan.lock
	@echo "Set up. 'make run' runs the pipeline; '. $(VENV)/bin/activate' puts iris-tfx on your PATH."

run:
	$(VENV)/bin/iris-tfx run

test:
	$(VENV)/bin/python -m pytest
