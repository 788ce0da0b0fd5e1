# Two commands for a new machine with Python 3.10+: `make demo` and `make test`.
# Everything installs into .venv from constraints.txt, the pinned set CI ran with.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint bench emulator constraints clean

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
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not integration"

lint: $(STAMP)
	$(VENV)/bin/ruff check airflow_provider_aitryon dags tests scripts benchmarks
	$(VENV)/bin/mypy

# Both benchmarks, each printing this provider's figures beside the peers' (about 25 minutes).
bench: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,bench]"
	$(PY) benchmarks/waits.py $(BENCH_WAITS_ARGS)
	$(PY) benchmarks/backfill.py $(BENCH_ARGS)

emulator: $(STAMP)
	$(PY) -m airflow_provider_aitryon.emulator --port 8089 --samples .demo/samples --make-samples .demo/samples

# Re-pin after changing dependencies: writes the exact versions installed in .venv.
constraints: $(STAMP)
	$(PY) -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^-e ' > constraints.txt

clean:
	rm -rf $(VENV) .airflow .demo .pytest_cache .mypy_cache .ruff_cache
