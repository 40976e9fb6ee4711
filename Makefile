# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test demo bench clean

$(BIN)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(BIN)/.dev: requirements.txt requirements-dev.txt $(BIN)/.runtime
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(BIN)/.runtime
	@$(BIN)/python -m bot run

test: $(BIN)/.dev
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 --dist loadfile

$(BIN)/.bench: requirements.txt requirements-bench.txt $(BIN)/.runtime
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	touch $@

# Speed, memory and quota figures against a local Imgur stand-in (a few minutes).
bench: $(BIN)/.bench
	$(BIN)/python -m bench.run

# A scripted conversation with the real bot against local stand-ins for Discord and Imgur.
demo: $(BIN)/.dev
	$(BIN)/python -m demo.run

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
