# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0
export RAY_TRAIN_ENABLE_PRINT_PATCH := 0

.PHONY: install demo test test-slow accuracy bench bench-scale bench-cluster clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sscc demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

accuracy: $(STAMP)
	$(VENV)/bin/sscc reproduce --suite --out runs/accuracy --doc docs/RESULTS.md

bench: $(STAMP)
	$(PY) -m benchmarks.bench --out docs/bench --doc docs/BENCHMARKS.md

bench-scale: $(STAMP)
	$(PY) -m benchmarks.bench --out docs/bench --doc docs/BENCHMARKS.md --scale-gb 26

bench-cluster: $(STAMP)
	$(PY) -m benchmarks.nodes --out docs/bench
	$(PY) -m benchmarks.object_store --out docs/bench
	$(PY) -m benchmarks.bench --out docs/bench --doc docs/BENCHMARKS.md --render-only

clean:
	rm -rf runs .pytest_cache
