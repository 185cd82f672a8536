# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make demo   - create .venv if missing, run the pipeline on the shipped example plates
#   make test   - create .venv if missing, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cr51-installed
CORES ?= 2

.PHONY: demo test lint bench clean-results

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --config raw_dir=resources/example settle_seconds=0
	@echo "Results: results/ (tables), results/report.html (report)"

test: $(STAMP)
	bash tools/setup-system.sh
	$(BIN)/python -m pytest

# --lint parses the workflow, whose parse-time scan reads a drop folder and admits its plates: a
# scratch drop folder and results folder, not the checkout's (tests/test_lint.py does the same)
lint: $(STAMP)
	tmp=$$(mktemp -d) && mkdir "$$tmp/raw" && \
		$(BIN)/snakemake --lint --config raw_dir="$$tmp/raw" results_dir="$$tmp/results"; \
		status=$$?; rm -rf "$$tmp"; exit $$status
	$(BIN)/snakefmt --check .
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Derived results only: results/archive (the accepted inputs, their versions and history) is the
# lab's record and is kept; remove it by hand if you really mean it.
clean-results:
	test ! -d results || find results -mindepth 1 -maxdepth 1 ! -name archive -exec rm -rf {} +
	rm -rf .snakemake/metadata .snakemake/incomplete

# Scheduled run of the drop folder (lock, checks, audit record, one summary line): docs/operations.md
.PHONY: batch
batch: $(STAMP)
	$(BIN)/cr51-batch --cores $(CORES)

# Benchmark (not part of the tests): 1,000 simulated plates, times as ratios to `python -c "import lmfit"`.
# PLATES=10000 for the scaling check (against the last 1,000-plate run's .bench/bench-1000.json).
# Figures and profile: docs/benchmarks.md
PLATES ?= 1000
BENCH_DIR ?= .bench
bench: $(STAMP)
	$(BIN)/python tools/bench.py --plates $(PLATES) --cores $(CORES) --json $(BENCH_DIR)/bench-$(PLATES).json \
		$(if $(filter-out 1000,$(PLATES)),--compare $(BENCH_DIR)/bench-1000.json)
