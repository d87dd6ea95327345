# The two commands that do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DURATION ?= 30

.PHONY: demo test bench install clean system-deps system-deps-test system-deps-bench _apt image boot-test

# Installs the agent into a local virtualenv, then runs it on its embedded default:
# an emulated DSMR 5 meter on a pseudo-terminal, live readings once a second, the API on :8080.
demo: system-deps $(VENV)/.installed
	$(BIN)/edge-agent demo --duration $(DURATION)

# Two workers, each test file on one (the suites start real processes, servers and ptys: a file's tests share
# its fixtures). The OpenAPI conformance tests run apart: schemathesis's generated tests are not collected
# under pytest-xdist (5 of 56 would run).
test: system-deps-test $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --ignore=tests/test_openapi.py
	$(BIN)/python -m pytest -q tests/test_openapi.py

bench: system-deps-bench $(VENV)/.installed-test
	for b in p1_pipeline store ingest durable bodies traffic triggers_sandbox privacy members access fleet web capacity memory; do \
	  [ -f bench/$$b.py ] && echo "== bench/$$b.py" && PYTHONPATH=. $(BIN)/python bench/$$b.py; done

install: $(VENV)/.installed

# The Raspberry Pi image (as root on Debian; image/README.md) and its QEMU boot test: minutes, not for CI.
image:
	image/build.sh

boot-test: $(VENV)/.installed
	image/test-boot.sh

# Debian packages: what the agent needs to run (libseccomp2, the sandbox), and what the tests need besides: the
# fleet's (nats-server, 2.9: JetStream clustering and key-value buckets) and the web pages' browser tests
# (chromium, driven by Playwright). Installed when missing and we may (root).
SYSTEM_PACKAGES := libseccomp2
TEST_SYSTEM_PACKAGES := $(SYSTEM_PACKAGES) nats-server chromium
# the benches count instructions with callgrind (bench/p1_pipeline.py, bench/ingest.py --instructions)
BENCH_SYSTEM_PACKAGES := $(TEST_SYSTEM_PACKAGES) valgrind
system-deps:
	@$(MAKE) --no-print-directory _apt PACKAGES="$(SYSTEM_PACKAGES)"

system-deps-test:
	@$(MAKE) --no-print-directory _apt PACKAGES="$(TEST_SYSTEM_PACKAGES)"

system-deps-bench:
	@$(MAKE) --no-print-directory _apt PACKAGES="$(BENCH_SYSTEM_PACKAGES)"

_apt:
	@missing=$$(for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing Debian packages: sudo apt-get install $$missing" >&2; exit 1; fi; }

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
