# compactlm: `make demo` and `make test` each create .venv on first use.
# torch is installed first and pinned through constraints.txt, so no dependency can replace the
# local CPU build with a CUDA one (GBs of nvidia wheels).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=
# PTQ benchmark peers: llm-compressor pins transformers <= 5.17, so it gets its own environment
PEERS       := .venv-peers
PEERS_STAMP := $(PEERS)/.installed-stamp
LLMC        ?= llmcompressor==0.14.0.1
BENCH_ARGS  ?=

.PHONY: install peers llamacpp autoround demo test test-slow bench-ptq bench-serve bench-gguf clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

$(PEERS_STAMP): constraints.txt
	@test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PEERS)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt "$(LLMC)"
	@touch $(PEERS_STAMP)

peers: $(PEERS_STAMP)

# the whole PTQ grid (resumable; hours on CPU): make bench-ptq BENCH_ARGS="--groups main"
bench-ptq: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python bench/ptq/run.py $(BENCH_ARGS)

# real-inference benchmark (resumable; ~1 h on the 2-core CPU, run it on an otherwise idle machine)
bench-serve: $(STAMP)
	$(BIN)/python bench/serve/run.py $(BENCH_ARGS)

# llama.cpp through its Python bindings (builds llama.cpp from source: ~10 min on 2 cores); optional,
# kept out of make test. Needed by bench-gguf and the slow GGUF test.
LLAMACPP ?= llama-cpp-python==0.3.36
llamacpp: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt "$(LLAMACPP)"

# AutoRound, the PTQ sweep's peer (bench/ptq/peers_autoround.py): it conflicts with llm-compressor in
# .venv-peers but installs into .venv (its requirements are already there but py-cpuinfo)
AUTOROUND ?= auto-round==0.16.1
autoround: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt "$(AUTOROUND)"

bench-gguf: $(STAMP)
	$(BIN)/python bench/gguf/run.py $(BENCH_ARGS)

demo: $(STAMP)
	$(BIN)/python -m compactlm.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
