# Two entry points, both self-contained on a fresh machine with Python 3.11 and pip:
#   make workbook   set up .venv and run every notebook headlessly into results/
#   make test       set up .venv (and Debian's chromium for the browser tests), lint with ruff, run the test suite
# and the course explorer:
#   make explorer   serve apps/explorer.ipynb with Voila on 127.0.0.1 (EXPLORER_PORT, default 8866)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CHROMIUM := /usr/bin/chromium
EXPLORER_PORT ?= 8866

.PHONY: workbook test setup notebooks explorer clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# the end-to-end tests drive Debian's Chromium (Playwright never downloads a browser)
$(CHROMIUM):
	@echo "installing Debian's chromium for the browser tests"
	DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
	  || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) \
	  || { echo "could not install chromium: as root, run 'apt-get update && apt-get install -y chromium'" \
	       "(Debian/Ubuntu), or put a Chromium binary at $(CHROMIUM)"; exit 1; }

test: $(STAMP) $(CHROMIUM)
	$(BIN)/ruff check liftcam_utils tests benchmarks
	$(BIN)/python -m pytest

workbook: $(STAMP)
	$(BIN)/python -m liftcam_utils.workbook notebooks results

# maintainers: re-execute the committed notebooks in place after library changes
notebooks: $(STAMP)
	$(BIN)/python -m liftcam_utils.workbook --in-place

# a random token guards the app; only this machine can reach it (127.0.0.1)
explorer: $(STAMP)
	@token=$$($(BIN)/python -c "import secrets; print(secrets.token_hex(24))"); \
	echo "LIFT-CAM explorer: open http://127.0.0.1:$(EXPLORER_PORT)/?token=$$token (Ctrl-C stops it)"; \
	JUPYTER_PATH="$(CURDIR)/apps/jupyter" $(BIN)/voila apps/explorer.ipynb --template=offline-lab --no-browser \
	  --Voila.ip=127.0.0.1 --port=$(EXPLORER_PORT) --Voila.port_retries=0 --token=$$token

clean:
	rm -rf $(VENV) results
