# make demo: the main job on a seeded checkpoint.  make test: the test suite.
# Both create .venv (Python 3.11) and install pinned dependencies on first use.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 is the CPU build here; an unpinned torch pulls several GB of CUDA packages.
PINS := "torch==2.13.0" "mxnet==1.9.1" "numpy>=1.23.2,<1.24"
PYTEST_ARGS ?=

.PHONY: demo test lint test-gpu bench venv clean
venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PINS)
	$(PY) -m pip install -q -e ".[mxnet,torch,onnx,test,opencv,paddle,openvino,int8]" $(PINS)
	touch $@

demo: venv
	$(PY) -m dpn_gluon.demo

# glibc's mmap threshold grows after each large free, so later arrays of up to 32 MB come from
# the heap and are never returned: a fixed threshold frees them (benchmarks.suite_memory:
# convert + model tests peak at 4.3 GiB instead of 7.1 GiB).
MALLOC_ENV := MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072

test: venv
	$(MALLOC_ENV) $(PY) -m pytest -q $(PYTEST_ARGS)

# ruff.toml: pyflakes, pycodestyle errors, import order (CI runs it before the tests)
lint: venv
	$(VENV)/bin/ruff check .

test-gpu: venv
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

bench: venv
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
