# Two commands do all the set-up (see README.md):
#   make run    - create .venv on first use, install deepfeat and its pinned dependencies, run the workflow
#   make test   - same set-up, then the test suite (what .ci/run calls)
#   make lint   - ruff, snakefmt and snakemake --lint (CI runs it too); make format applies the formatters
VENV    ?= .venv
PYTHON  ?= python3.11
CORES   ?= 2
ARGS    ?=
STAMP   := $(VENV)/.installed
PY_SRC  := src tests bench scripts
BIN     := $(VENV)/bin

.PHONY: run test dry lint format report clean-venv

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU wheel of torch first, so nothing pulls a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# tinysoundfont declares pyaudio (playback only, needs portaudio headers): rendering needs neither
	$(BIN)/pip install --quiet --no-deps tinysoundfont==0.3.7
	touch $@

run: $(STAMP)
	$(BIN)/snakemake --profile profiles/default --cores $(CORES) $(ARGS)
	$(BIN)/snakemake --profile profiles/default --cores $(CORES) $(ARGS) --report results/report.html

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

dry: $(STAMP)
	$(BIN)/snakemake -n $(ARGS)

# ruff (lint + format check) on the Python code, snakefmt on the workflow files, Snakemake's own linter
lint: $(STAMP)
	$(BIN)/ruff check $(PY_SRC)
	$(BIN)/ruff format --check $(PY_SRC)
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint $(ARGS)

# apply the formatters that `make lint` checks
format: $(STAMP)
	$(BIN)/ruff check --fix $(PY_SRC)
	$(BIN)/ruff format $(PY_SRC)
	$(BIN)/snakefmt Snakefile rules

report: $(STAMP)
	$(BIN)/snakemake --profile profiles/default --report results/report.html $(ARGS)

clean-venv:
	rm -rf $(VENV)
