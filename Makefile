# The two commands a new user needs: `make run` and `make test`.
# Both create .venv on first use; `run` installs what the service needs,
# `test` adds the test, lint and Django tools.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
APP    := $(VENV)/.installed-app
DEV    := $(VENV)/.installed-dev
BENCH  := $(VENV)/.installed-bench
UI     := $(VENV)/.installed-ui
HOST   ?= 127.0.0.1
PORT   ?= 8009

.PHONY: run setup ui test lint pytest install bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(APP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $(APP)

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,django-test,ui]'
	@touch $(DEV) $(APP) $(UI)

$(UI): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[ui]'
	@touch $(UI) $(APP)

$(BENCH): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@touch $(BENCH) $(APP)

install: $(DEV)

# What `make run` does before serving: .venv with chatgate and its `chatgate` command.
setup: $(APP)

# chatgate and the Streamlit app (chatgate_ui/) together; opens the browser on it.
UI_PORT ?= 8501
ui: $(UI)
	$(BIN)/python -m chatgate_ui.launch --host $(HOST) --port $(PORT) --ui-port $(UI_PORT)

# `chatgate serve` is uvicorn without proxy headers (TRUSTED_PROXIES decides those).
run: $(APP)
	$(BIN)/chatgate serve --host $(HOST) --port $(PORT)

lint: $(DEV)
	$(BIN)/ruff check app chatgate_ui tests scripts bench
	$(BIN)/ruff format --check app chatgate_ui tests scripts bench
	$(BIN)/mypy app chatgate_ui

pytest: $(DEV)
	$(BIN)/pytest

test: lint pytest

# Not a test: drives a real server with wrk and rewrites docs/performance.md.
# Needs wrk (Debian/Ubuntu: sudo apt-get install wrk); takes about 10 minutes.
bench: $(BENCH)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Not a test: two minutes of mixed load on a real server; fails on any 5xx or
# memory still growing in the second half. SOAK_ARGS="--seconds 30" is quicker.
soak: $(APP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
