# The two commands of the README:
#   make demo   set up, then run the smoke sweep (grids/smoke.yaml) on the embedded real digits
#   make test   set up, then run the full test suite: Ray, multi-node, slow (what .ci/run calls)
# and, for developers, the quick tier without Ray and slow tests:
#   make test-quick
# and, on a lent GPU machine (no venv there; bench/README.md "GPU check"):
#   make device-check                                   the GPU check, summary in $OUT
#   make device-check PYTHON=.venv/bin/python ARGS=--dry-run   its dry run on a CPU
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-quick demo bench device-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the wheels this project is tested with (on disk here)
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest

test-quick: setup
	$(PY) -m pytest -m "not ray and not slow"

demo: setup
	$(VENV)/bin/fl-sweep run grids/smoke.yaml

bench: setup
	$(PY) bench/round_speed.py
	$(PY) bench/cli_startup.py

device-check:
	PYTHON="$(or $(PYTHON),python3)" bash bench/device_check.sh $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
