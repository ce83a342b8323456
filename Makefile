# `make quickstart` and `make test` each set up .venv on a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The dev/test install pins torch's CPU wheel (a bare `torch` would pull a multi-GB CUDA build);
# setup.py itself keeps a range that admits CUDA builds. DS_BUILD_OPS=0: pure-Python DeepSpeed.
TORCH_PIN := torch==2.13.0

.PHONY: quickstart test test-fast lint format clean

$(STAMP): setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/mdm train configs/quickstart.yaml checkpoint.resume=none
	$(VENV)/bin/mdm generate --ckpt runs/quickstart --prompt "The old king said: " \
		--gen-length 64 --steps 64 --block-length 32 --num-samples 3 --temperature 0.5 --seed 1

# The static checks, run first by `test` and `test-fast`. mypy checks the paths listed once in
# pyproject.toml ([tool.mypy] files); codespell reads [tool.codespell] there.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/codespell
	$(PY) -m mypy

# Two pytest workers, each taking whole test files (module fixtures such as test_convert's
# training runs are built once): on the 2-core CI machine the subprocess-heavy suite then keeps
# both cores busy. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

# Without the multi-process (torchrun / gloo) tests marked `slow`: minutes, not a quarter hour.
test-fast: lint
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile -m "not slow"

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .mypy_cache
