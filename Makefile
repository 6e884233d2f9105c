# Every target creates .venv when it is missing and installs the package into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench install clean package install-desktop

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): $(PY) pyproject.toml
	# torch/torchvision first, pinned to the wheels on this machine's disk, so the
	# resolver never reaches for a different (multi-GB) build.
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	# The tflite extra (TensorFlow Lite engine) only where litert-converter has wheels;
	# elsewhere its tests skip and say why.
	case "$$(uname -s)-$$(uname -m)" in \
	  Linux-x86_64|Darwin-arm64) $(PY) -m pip install -e ".[test,tflite]" ;; \
	  *) $(PY) -m pip install -e ".[test]" ;; \
	esac
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/quantstudio --demo

test: $(STAMP)
	$(PY) -m mypy
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest tests

bench: $(STAMP)
	# The trained-ResNet-18 section trains on scikit-learn's bundled digits (the `demo` extra).
	$(PY) -c "import sklearn" 2>/dev/null || $(PY) -m pip install -e ".[test,demo]"
	QT_QPA_PLATFORM=offscreen $(PY) -m tests.benchmarks.run_all
	# Sections kept by their own scripts (run_all rewrites the file above them):
	# LiteRT (where the tflite extra is installed) and outlier channels / auto precision.
	if $(PY) -c "import ai_edge_litert, litert_torch" 2>/dev/null; then \
	  $(PY) -m tests.benchmarks.tflite_bench --append tests/benchmarks/RESULTS.md; fi
	$(PY) -m tests.benchmarks.auto_precision_bench --force
	# The search from the defaults (equalization on) and the 64x64 search-time rows.
	$(PY) -m tests.benchmarks.auto_precision_bench --force --what auto-eq timing64 \
	  --models "mobilenet_v2 3 sites s300" "mobilenet_v2 stage 7-10 s30" "resnet18 3 blocks s300"

# The standalone app: dist/QuantStudio/ (launcher dist/QuantStudio/QuantStudio), checked by
# its own end-to-end self-test. How it is built and what it leaves out: packaging/README.md.
package: $(STAMP)
	$(PY) -c "import PyInstaller" 2>/dev/null || $(PY) -m pip install -e ".[package]"
	nice -n 10 $(PY) -m PyInstaller --noconfirm --distpath dist --workpath build packaging/quantstudio.spec
	dist/QuantStudio/QuantStudio --version
	dist/QuantStudio/QuantStudio --self-test

# Menu entry, icon and .qsproj file type for this user: the packaged app when it is built,
# otherwise the .venv install.
install-desktop: $(STAMP)
	if [ -x dist/QuantStudio/QuantStudio ]; then dist/QuantStudio/QuantStudio --install-desktop; \
	else $(VENV)/bin/quantstudio --install-desktop; fi

clean:
	rm -rf $(VENV) build dist *.egg-info
