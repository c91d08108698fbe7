# Two entry points, both idempotent (the virtual environment is reused on a second run):
#   make demo   install, then run a short AMC search on an embedded default model and data
#   make test   install, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
PIP_CONSTRAINT_FLAG = $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
BIN = $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(PIP_CONSTRAINT_FLAG) -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/amc demo

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)
