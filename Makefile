# The two commands that do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DURATION ?= 30

.PHONY: demo test bench install clean

# Installs the agent into a local virtualenv, then runs it on its embedded default:
# an emulated DSMR 5 meter on a pseudo-terminal, live readings once a second, the API on :8080.
demo: $(VENV)/.installed
	$(BIN)/edge-agent demo --duration $(DURATION)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-test
	$(BIN)/python bench/p1_pipeline.py
	$(BIN)/python bench/store.py

install: $(VENV)/.installed

$(VENV)/bin/pip:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
