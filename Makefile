# Two entry points that work on a fresh machine with only Python:
#   make demo   – set up .venv and run the main job on the built-in synthetic data
#   make test   – set up .venv-test (with the reference stacks for parity tests), lint, and run the tests
#   make fuzz   – the fuzzing harness (tests/fuzz) with its long budget
#   make lint   – ruff over src/tests/benchmarks and mypy over src/ (the checked packages: pyproject.toml)
PYTHON ?= python3
TORCH ?= torch==2.13.0
# The parity tests need open_clip/timm/transformers, which need torchvision; these two install together.
TEST_TORCH ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: demo test test-slow lint fuzz clean

.venv/.stamp: pyproject.toml
	$(PYTHON) -m venv .venv
	.venv/bin/python -m pip install -q --upgrade pip
	.venv/bin/python -m pip install -q "$(TORCH)"
	.venv/bin/python -m pip install -q -e .
	touch $@

.venv-test/.stamp: pyproject.toml
	$(PYTHON) -m venv .venv-test
	.venv-test/bin/python -m pip install -q --upgrade pip
	.venv-test/bin/python -m pip install -q $(TEST_TORCH)
	.venv-test/bin/python -m pip install -q -e ".[dev]"
	touch $@

demo: .venv/.stamp
	.venv/bin/clipforge quickstart

lint: .venv-test/.stamp
	.venv-test/bin/ruff check src tests benchmarks
	.venv-test/bin/mypy

test: lint
	.venv-test/bin/python -m pytest -q $(PYTEST_ARGS)

fuzz: .venv-test/.stamp
	HYPOTHESIS_PROFILE=fuzz .venv-test/bin/python -m pytest -q tests/fuzz $(PYTEST_ARGS)

test-slow: .venv-test/.stamp
	.venv-test/bin/python -m pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf .venv .venv-test build *.egg-info .pytest_cache .ruff_cache
