# The two commands a new user runs: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The tested torch build; the package itself only asks for torch>=2.6.
TORCH_PIN := torch==2.13.0

.PHONY: quickstart test test-fast bench docs lint format clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

quickstart: $(VENV)/.installed
	$(PY) -m astropt.quickstart --out runs/quickstart

# report.py --check: every generated table agrees with its result file, and every
# docs/results file with its own per-fold rows and digest (a hand edit fails).
test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) bench/report.py --check
	$(PY) -m pytest

# The edit loop: ruff and the tests not marked slow (about a minute); CI runs `make test`.
test-fast: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -m "not slow" -q

# Every benchmark appends its figures to bench/results/; report.py rewrites the
# benchmark table of docs/benchmarks.md from them (ranges over all recorded runs).
# The training step runs on one thread: its steps are then timed in CPU seconds,
# which other processes' load does not inflate (see bench/train_step.py).
BENCHES := limits tokens data simulate embed export_memory generate finetune jpeg_reduce
bench: $(VENV)/.installed
	@for b in $(BENCHES); do echo "== bench/$$b.py"; $(PY) bench/$$b.py || exit 1; done
	@echo "== bench/train_step.py --threads 1"; $(PY) bench/train_step.py --threads 1
	$(PY) bench/report.py

# The documentation site from docs/*.md into site/ (tests/test_docs.py builds it too, strictly).
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) runs build site *.egg-info
