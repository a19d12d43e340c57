PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: setup tools lint test test-fast chaos bench bench-fleet bench-instructions demo clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python >= 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# the benchmark's own dependencies (the bench extra) on top of dev; `make test` never needs them
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

setup: $(STAMP) tools

tools:
	@bash scripts/ensure-tools.sh

lint: $(STAMP)
	$(BIN)/ruff check cycles_events tests benchmarks
	$(BIN)/ruff format --check cycles_events tests benchmarks
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest -q -p no:cacheprovider -n 2 tests

test-fast: setup
	$(BIN)/pytest -q -x tests/unit tests/integration

chaos: setup
	$(BIN)/pytest -q -p no:cacheprovider -m chaos -s tests/e2e/test_chaos.py

# make bench ARGS=--quick (or ARGS='--only goal1,goal3 --no-write'): options of the benchmark
bench: setup $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.dispatch $(ARGS)

# goal 2's fleet sweep alone: 4 daemons on one redis-server, 64 to 4,096 deliveries in flight
bench-fleet: setup $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.dispatch --fleet $(ARGS)

# Redis's instructions per delivery in a burst, counted by callgrind (repeatable, unlike CPU time)
bench-instructions: setup $(BENCH_STAMP)
	@bash scripts/ensure-tools.sh valgrind
	$(BIN)/python -m benchmarks.dispatch.instructions $(ARGS)

# make demo ARGS=--hold (or ARGS='--events 1000 --rate 200'): options of the demo script
demo: setup
	$(BIN)/python -m cycles_events.demo $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
