# `make demo`: install into .venv and run the main job on the embedded digits data.
# `make test`: install into .venv and run the test suite; `make lint`: ruff and the import layers
# (import-linter), configured in pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/digits

$(VENV)/.installed: requirements.txt requirements-test.txt requirements-test-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -r requirements-test-nodeps.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m diffusion_jax.main --config=configs/digits.py --workdir=$(WORKDIR) --mode=all

test: install
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests

lint: install
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

.PHONY: install demo test lint
