# The README's two commands: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# torch is installed before the package so that pip never resolves "torch>=2.5" to a newer
# build with several GB of CUDA wheels on a CPU machine. With an NVIDIA driver present, the
# registry's default (CUDA) build is taken instead. Override: make test TORCH_SPEC="torch==2.11.0".
HAS_GPU    := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= $(if $(HAS_GPU),torch>=2.5,torch==2.13.0)
EXTRAS     ?= dev
BUILD      ?= build

.PHONY: demo test test-all native clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[$(EXTRAS)]"
	touch $@

demo: native
	$(BIN)/fastflow demo --out demo_out

# The native runner (kernels/, CMakeLists.txt) with the venv's CMake and Ninja (dev extra), against
# the venv's libtorch; linked into the venv's bin, so that `fastflow-run` is on the venv's PATH.
native: $(VENV)/.installed
	$(BIN)/cmake -S . -B $(BUILD) -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(BIN)/ninja) \
		-DPython3_EXECUTABLE=$(abspath $(BIN)/python)
	$(BIN)/cmake --build $(BUILD)
	ln -sf $(abspath $(BUILD))/kernels/fastflow-run $(BIN)/fastflow-run

# `make test` leaves out the tests marked slow (method-quality claims trained for minutes on the
# CPU); `make test-all` runs them too. pytest's exit 5 (nothing collected) fails either.
test: native
	$(BIN)/python -m pytest -m "not slow"
	cd $(BUILD) && $(abspath $(BIN)/ctest) --output-on-failure --no-tests=error -j2

test-all: native
	$(BIN)/python -m pytest
	cd $(BUILD) && $(abspath $(BIN)/ctest) --output-on-failure --no-tests=error -j2

clean:
	rm -rf $(VENV) $(BUILD) demo_out runs .pytest_cache
