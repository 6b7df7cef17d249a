# The two commands a new user needs: `make run` and `make test`.
# Both create .venv on first use; `run` installs what the service needs,
# `test` adds the test, lint and Django tools.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
APP    := $(VENV)/.installed-app
DEV    := $(VENV)/.installed-dev
HOST   ?= 127.0.0.1
PORT   ?= 8009

.PHONY: run test lint pytest install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(APP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $(APP)

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,django-test]'
	@touch $(DEV) $(APP)

install: $(DEV)

# --no-proxy-headers: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1.
run: $(APP)
	$(BIN)/uvicorn app.main:app --host $(HOST) --port $(PORT) --no-proxy-headers

lint: $(DEV)
	$(BIN)/ruff check app tests scripts
	$(BIN)/ruff format --check app tests scripts
	$(BIN)/mypy app

pytest: $(DEV)
	$(BIN)/pytest

test: lint pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
