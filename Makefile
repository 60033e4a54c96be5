# Two entry points on a fresh machine: `make demo` and `make test`. Each builds its own venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STATE ?= .state

.PHONY: demo test lint bench clean controlplane

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed  ## the six steps end to end on the embedded testbed
	$(BIN)/outpost-demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy agent mgmt_gateway testbed/natsd.py testbed/controlplane testbed/capi testbed/backends.py testbed/kubeconfig.py testbed/procs.py testbed/pytest_watchdog.py testbed/demo.py testbed/demo_addons.py testbed/gateway.py bench/fleet.py bench/addons.py

test: lint controlplane  ## ruff, mypy --strict, the real control plane (built or reused) and the whole pytest suite
	$(BIN)/pytest

bench: $(BIN)/.installed  ## print the benchmark figures
	$(BIN)/python -m bench

controlplane:  ## build etcd, kube-* and helm from the pins in testbed/controlplane/go (needs Go >= 1.26); cached in ~/.cache/outpost
	@command -v go >/dev/null 2>&1 || { echo "controlplane: go is not on PATH: install Go >= 1.26 (https://go.dev/dl/)" >&2; exit 1; }
	$(PYTHON) testbed/controlplane/build.py

clean:
	rm -rf $(VENV) $(STATE) .pytest_cache .mypy_cache .ruff_cache
