# Two entry points, both self-contained on a fresh machine with Python 3.11 and pip:
#   make workbook   set up .venv and run every notebook headlessly into results/
#   make test       set up .venv, lint with ruff, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: workbook test setup notebooks clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check liftcam_utils tests benchmarks
	$(BIN)/python -m pytest

workbook: $(STAMP)
	$(BIN)/python -m liftcam_utils.workbook notebooks results

# maintainers: re-execute the committed notebooks in place after library changes
notebooks: $(STAMP)
	$(BIN)/python -m liftcam_utils.workbook --in-place

clean:
	rm -rf $(VENV) results
