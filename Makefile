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

# Threads per op: the cores idle right now (tools/idle_cores.py, at most 4): on an idle machine
# two threads train this model 1.7x faster than one; on a busy one threads per op oversubscribe
# the cores and stall (15x slower measured at load 7-13), so there it is one.
QS_THREADS ?= $(shell $(PYTHON) tools/idle_cores.py)
QS_PROMPT  := The old king said: "

# Train (configs/quickstart.yaml: the small synthetic lexicon), sample left to right with the
# MDM (block length 1), then print the samples, their vocabulary match and the loss sparkline.
quickstart: $(STAMP)
	OMP_NUM_THREADS=$(QS_THREADS) $(VENV)/bin/mdm train configs/quickstart.yaml checkpoint.resume=none
	OMP_NUM_THREADS=$(QS_THREADS) $(VENV)/bin/mdm generate --ckpt runs/quickstart \
		--prompt '$(QS_PROMPT)' --gen-length 64 --steps 64 --block-length 1 \
		--temperature 0.3 --num-samples 3 --seed 1 > runs/quickstart/samples.txt
	$(PY) tools/quickstart_report.py runs/quickstart runs/quickstart/samples.txt --prompt '$(QS_PROMPT)'

# The static checks, run first by `test` and `test-fast`. mypy checks the paths listed once in
# pyproject.toml ([tool.mypy] files); codespell reads [tool.codespell] there.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/codespell
	$(PY) -m mypy

# Two pytest workers, each taking whole test files (module fixtures such as test_convert's
# training runs are built once): on the 2-core CI machine the subprocess-heavy suite then keeps
# both cores busy; one thread per process (OMP_NUM_THREADS=1) so the workers and the processes
# they start do not oversubscribe the cores. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

# Without the multi-process (torchrun / gloo) tests marked `slow`: minutes, not a quarter hour.
test-fast: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile -m "not slow"

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .mypy_cache
