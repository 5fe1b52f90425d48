# `make run` and `make test` do all the set-up on a fresh machine: both venvs, the data, then the job or the tests.
PYTHON ?= python3
VENV := .venv
MXVENV := .venv-mxnet
PY := $(VENV)/bin/python
TEST_ARGS ?=
# Test processes (pytest-xdist): the tests are mostly one core each (worker start-up, imports, compilation).
TEST_WORKERS ?= 2

.PHONY: setup main-venv mxnet-venv data run test bench clean clean-results
setup: main-venv mxnet-venv data

main-venv: $(VENV)/.installed
$(VENV)/.installed: requirements/main.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# The CPU wheel of torch lies on local disk; install it first so nothing pulls a CUDA build.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -r requirements/main.txt
	touch $@

mxnet-venv: $(MXVENV)/.installed
$(MXVENV)/.installed: requirements/mxnet.txt
	$(PYTHON) -m venv $(MXVENV)
	$(MXVENV)/bin/pip install -q -r requirements/mxnet.txt
	$(MXVENV)/bin/python -c "import mxnet, numpy; print('mxnet', mxnet.__version__, 'numpy', numpy.__version__)"
	touch $@

data: main-venv
	scripts/get-data.sh $(PY)

run: setup
	$(PY) harness.py --backend all --mode all

test: setup
	HARNESS_REQUIRE_BACKENDS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(TEST_ARGS)

bench: setup
	$(PY) harness.py bench --backend all --mode all

# The venvs and caches only; a user's run folders stay (clean-results removes them, and says so).
clean:
	rm -rf $(VENV) $(MXVENV) .pytest_cache

clean-results:
	@echo "removing results/ (every run folder in it)"
	rm -rf results
