# sluice — the two commands most people need:
#   make serve   installs what is missing, builds, serves the default model on 127.0.0.1:8000
#   make test    installs what is missing, builds, runs every test
# Variables: MODEL (path or HF id; default SmolLM2-135M-Instruct), HOST, PORT,
# API_KEY (or VLLM_API_KEY in the environment), ARGS (any other `sluice serve` flags).

HOST ?= 127.0.0.1
PORT ?= 8000
MODEL ?=
API_KEY ?=
ARGS ?=
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
BIN := $(TARGET_DIR)/release/sluice

.PHONY: setup build serve test bench clean

# The venv (torch, default models) lives in ~/.cache/sluice, keyed by its pins;
# setup.sh is idempotent and takes about a second once done.
setup:
	@bash scripts/setup.sh

build: setup
	cargo build --release

serve: build
	$(BIN) serve $(MODEL) --host $(HOST) --port $(PORT) $(if $(API_KEY),--api-key $(API_KEY)) $(ARGS)

test: build
	CI=true cargo test --release -- --test-threads=$(or $(TEST_THREADS),2)

clean:
	cargo clean
