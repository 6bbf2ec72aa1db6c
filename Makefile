# The three commands of the README: make setup, make run, make test.
# Python 3.10 exactly (TFX 1.16 needs < 3.11); pyenv's 3.10 is used when `python3.10` is not on PATH.
PYTHON ?= $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10; do \
            $$p -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && { echo $$p; break; }; done)
VENV ?= .venv

.PHONY: setup run test

setup:
	@test -n "$(PYTHON)" || { echo "Python 3.10 is required: install python3.10 (and python3.10-venv)"; exit 1; }
	@# kubectl renders the Kubernetes overlays in the tests (Debian's kubernetes-client has kustomize built in).
	command -v kubectl >/dev/null 2>&1 || { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update && \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y kubernetes-client; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet pip==24.3.1
	$(VENV)/bin/pip install --quiet -r requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps -e .

run:
	$(VENV)/bin/iris-tfx run

test:
	$(VENV)/bin/python -m pytest
