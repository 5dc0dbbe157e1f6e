# dbops: `make run` (local stack + Airflow UI), `make demo`, `make test`, `make bench`.
# Everything installs into .venv; data, logs and backups live under var/.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install run demo test bench up down clean

install: $(INSTALLED)

$(INSTALLED): requirements.txt constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	@touch $@

run: install
	$(PY) scripts/devstack.py run

demo: install
	$(PY) scripts/devstack.py demo

test: install
	$(PY) scripts/devstack.py test $(PYTEST_ARGS)

bench: install
	$(PY) scripts/devstack.py bench $(BENCH_ARGS)

up: install
	$(PY) scripts/devstack.py up

down:
	$(PY) scripts/devstack.py down

clean: down
	rm -rf var
