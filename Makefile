# Every target creates .venv when it is missing and installs the package into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): $(PY) pyproject.toml
	# torch/torchvision first, pinned to the wheels on this machine's disk, so the
	# resolver never reaches for a different (multi-GB) build.
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/quantstudio --demo

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest tests

bench: $(STAMP)
	# The trained-ResNet-18 section trains on scikit-learn's bundled digits (the `demo` extra).
	$(PY) -c "import sklearn" 2>/dev/null || $(PY) -m pip install -e ".[test,demo]"
	QT_QPA_PLATFORM=offscreen $(PY) -m tests.benchmarks.run_all

clean:
	rm -rf $(VENV) build *.egg-info
