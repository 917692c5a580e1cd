# Quick start: `make repro` (set-up + demo pipeline), `make test` (set-up + test suite).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The CPU wheel of torch; on a GPU machine install the CUDA build first (see README) and it stays in place.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup repro exp ui test bench profile

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --disable-pip-version-check -q "$(TORCH_SPEC)"
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e ".[dev]"
	touch $@

# One local Ray instance serves every training stage (Ray's start-up dominates short runs); an existing
# cluster is used as is when RAY_ADDRESS is set. The head runs as `ray start --block`, so stopping it (SIGTERM
# on exit, Ctrl-C included) shuts down this instance only, not other Ray sessions on the machine.
# `make exp ARGS="-S experiments.drive_cnf.train.steps=300"` runs `dvc exp run ARGS` the same way (one Ray
# instance for the experiment's stages); queued experiments (`dvc exp run --queue`, `dvc queue start`) run
# in DVC's own workers and start Ray per stage.
DVC_CMD = dvc repro
exp: DVC_CMD = dvc exp run $(ARGS)

repro exp: setup
	@set -e; export PATH="$(CURDIR)/$(BIN):$$PATH"; \
	if [ -z "$$RAY_ADDRESS" ]; then \
	  export RAY_AUTH_MODE=disabled; \
	  port=$$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"); \
	  ray start --head --block --node-ip-address 127.0.0.1 --port $$port --num-cpus $$(nproc) \
	    --include-dashboard=false --disable-usage-stats > .ray-head.log 2>&1 & ray_pid=$$!; \
	  trap 'kill -TERM $$ray_pid 2>/dev/null; wait $$ray_pid 2>/dev/null || true' EXIT; \
	  trap 'exit 130' INT TERM; \
	  for i in $$(seq 120); do \
	    grep -q "Ray runtime started" .ray-head.log && break; \
	    kill -0 $$ray_pid 2>/dev/null || { cat .ray-head.log; echo "ray start failed" >&2; exit 1; }; \
	    sleep 0.5; \
	  done; \
	  grep -q "Ray runtime started" .ray-head.log || { cat .ray-head.log; echo "ray start: no head after 60 s" >&2; exit 1; }; \
	  export RAY_ADDRESS=127.0.0.1:$$port; \
	fi; \
	$(DVC_CMD)

# Switch the active profile (params.yaml, what `dvc repro` reads): `make profile PROFILE=cpu` (the real datasets
# in ../shared/datasets, hours on 2 cores), PROFILE=paper (the papers' settings, GPU cluster), PROFILE=demo
# (procedural data, minutes; the committed params.yaml). Each profile is params-<name>.yaml.
PROFILE ?= demo
profile:
	@test -f params-$(PROFILE).yaml || { echo "no profile '$(PROFILE)': expected params-$(PROFILE).yaml (demo, cpu, paper)" >&2; exit 2; }
	cp params-$(PROFILE).yaml params.yaml
	@echo "params.yaml is now the $(PROFILE) profile: run \`make repro\` (or \`dvc repro\`)"

# The MLflow UI on the project's store (every run of `make repro`, `dvc exp run` and `cnf`), http://127.0.0.1:5000
ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e ".[bench]"
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/flow_throughput.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/loader_throughput.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/train_throughput.py
