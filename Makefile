# The README's two commands: `make run` (the main job on the embedded default) and `make test`.
# Both set up .venv first; scripts/bootstrap.sh is a no-op once the stack is installed.
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# The suite runs on this many worker processes, each test module on one of them (its shared
# fixtures built once); `make test TEST_WORKERS=1` runs it in one process. Each worker has its own
# Spark driver (3 GiB heap), so more workers need more memory, not only more cores.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)
# `make run DATASET=bundesliga` runs another dataset of conf/base/datasets/ (default: conf/base's).
DATASET ?=

.PHONY: setup run test test-fast bench bench-x100 bench-daily bench-year dist clean-lakehouse lock

setup:
	@scripts/bootstrap.sh

run: setup
	$(BIN)/lakehouse-dl run $(if $(DATASET),--dataset $(DATASET))

test: setup
	$(PYTEST) $(PYTEST_ARGS)

# The fast tests alone: no end-to-end runs over the full year, no cluster, no notebooks.
test-fast: setup
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench.run_all

# ×1, ×10 and ×100 of January 2013 (2.7 million flights at ×100), scale and peer in one run (docs/benchmarks.md).
bench-x100: setup
	$(BIN)/python -m bench.run_all --only scale,peer --factors 1,10,100 --window 2013-01-01,2013-01-31

# The synthetic daily feed: 5,000 days of one row a day in two sources, ingest + clean + features
# against the pandas peer, and the files of every table against its months (docs/benchmarks.md).
bench-daily: setup
	$(BIN)/python -m bench.daily_feed --days 5000

# A year of nightlies on the Bundesliga slice (2005-07-01 on), retrained every 30 days: a night's
# seconds at the end against the start, registration, storage after maintain (docs/benchmarks.md).
bench-year: setup
	$(BIN)/python -m bench.year --days 365

dist: setup
	$(BIN)/python scripts/make_dist.py

clean-lakehouse:
	rm -rf lakehouse

# Re-pin after changing requirements/base.txt (run inside a fresh venv).
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v -E '^(horovod|lakehouse-dl)==' > requirements/lock-cpu.txt
