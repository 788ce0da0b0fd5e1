# Two commands for a new machine with Python 3.10+: `make demo` and `make test`.
# Everything installs into .venv from constraints.txt, the pinned set CI ran with.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-slow test-fast test-matrix test-matrix-ci lint bench emulator constraints constraints-matrix clean docs

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed, found " + sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# Two workers, one test file each at a time: the integration tests mostly wait on Airflow and the
# emulator, so the suite takes about 6 minutes on 2 cores instead of 11.
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile -m "not slow"

# The few tests that take minutes each (a 200-item batch through every fault): CI runs them too.
test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not integration"

lint: $(STAMP)
	$(VENV)/bin/ruff check airflow_provider_aitryon dags tests scripts benchmarks docs
	$(VENV)/bin/mypy

# The three benchmarks, each printing this provider's figures beside the peers' (about 35 minutes).
bench: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,bench]"
	$(PY) benchmarks/waits.py $(BENCH_WAITS_ARGS)
	$(PY) benchmarks/backfill.py $(BENCH_ARGS)
	$(PY) benchmarks/gallery.py $(BENCH_GALLERY_ARGS)

# The documentation site, strict: any warning (a broken reference too) fails the build.
DOCS_STAMP := $(VENV)/.docs-installed-stamp

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	AIRFLOW_HOME=$(CURDIR)/docs/_build/airflow-home AIRFLOW__LOGGING__LOGGING_LEVEL=WARNING $(PY) -m sphinx -W --keep-going -n -q -b html docs docs/_build/html
	@echo "Documentation: docs/_build/html/index.html"

emulator: $(STAMP)
	$(PY) -m airflow_provider_aitryon.emulator --port 8089 --samples .demo/samples --make-samples .demo/samples

# Re-pin after changing dependencies: writes the exact versions installed in .venv.
constraints: $(STAMP)
	$(PY) -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^-e ' > constraints.txt

# The Airflow version matrix (docs/versions.rst): the suite without the slow real-Airflow tests, on
# each supported Airflow minor, each in .venv-matrix/airflow-<minor> from its own constraints
# (3.1, 3.2: constraints/airflow-<minor>.txt; 3.3: constraints.txt). Prints a result table.
# MATRIX_ARGS="--minor 3.1" runs one; MATRIX_ARGS="-- -x tests/test_compat.py" other pytest args.
test-matrix:
	$(PYTHON) scripts/matrix.py --python $(PYTHON) test $(MATRIX_ARGS)

# CI's share (after `make test`, which covers 3.3 in full): the other minors, about 10 minutes.
test-matrix-ci:
	$(PYTHON) scripts/matrix.py --python $(PYTHON) test --ci

# Re-pin constraints/airflow-3.1.txt and -3.2.txt: a fresh venv each with the minor's latest
# Airflow and .[dev], frozen (Airflow's published constraint files are not reachable here).
constraints-matrix:
	$(PYTHON) scripts/matrix.py --python $(PYTHON) constraints

clean:
	rm -rf $(VENV) .venv-matrix .airflow .demo .pytest_cache .mypy_cache .ruff_cache
