# Two entry points, both self-contained on a fresh machine with Python 3.11 and pip:
#   make workbook   set up .venv and run every notebook headlessly into results/
#   make test       set up .venv (and Debian's chromium for the browser tests), lint with ruff, run the test suite
# and the course explorer, editions and site:
#   make explorer   serve apps/explorer.ipynb with Voila on 127.0.0.1 (EXPLORER_PORT, default 8866)
#   make student    write the student edition of notebooks 00 and 01 to build/student/
#   make grade SUBMISSIONS=dir   grade dir/<student>/<notebook>.ipynb into build/grades.csv
#   make site       build the course site in build/site/: the executed notebooks and course documents, offline HTML
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CHROMIUM := /usr/bin/chromium
EXPLORER_PORT ?= 8866
# Where make can install Chromium (root, with apt-get: CI), the browser tests must run: LIFTCAM_REQUIRE_BROWSER=1
# makes them fail, never skip, without it. Elsewhere a missing Chromium skips them with a warning and a skip reason
# naming what to install. Set LIFTCAM_REQUIRE_BROWSER=0 or 1 (environment or make argument) to decide yourself.
CAN_INSTALL_CHROMIUM := $(shell [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && echo yes)
LIFTCAM_REQUIRE_BROWSER ?= $(if $(CAN_INSTALL_CHROMIUM),1,0)

.PHONY: workbook test setup notebooks explorer student grade site clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# the end-to-end tests drive Debian's Chromium (Playwright never downloads a browser); a failed install is not fatal
# here: the browser tests then fail (LIFTCAM_REQUIRE_BROWSER=1) or are skipped, and the other tests still run
$(CHROMIUM):
ifeq ($(CAN_INSTALL_CHROMIUM),yes)
	@echo "installing Debian's chromium for the browser tests"
	DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
	  || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) \
	  || echo "WARNING: could not install chromium (apt-get failed); the browser tests will" \
	       "$(if $(filter 1,$(LIFTCAM_REQUIRE_BROWSER)),FAIL (LIFTCAM_REQUIRE_BROWSER=1),be skipped)"
else
	@echo "WARNING: $(CHROMIUM) is missing and make can install it only as root with apt-get; the browser tests will" \
	  "$(if $(filter 1,$(LIFTCAM_REQUIRE_BROWSER)),FAIL (LIFTCAM_REQUIRE_BROWSER=1),be skipped):" \
	  "as root, run 'apt-get update && apt-get install -y chromium' (Debian/Ubuntu), or put a Chromium at $(CHROMIUM)"
endif

# nbval runs copies of the notebooks at small parameters (liftcam_utils.app.workbook.QUICK_PARAMETERS): their checked
# cells state invariants that hold at any size. `pytest` alone re-executes the committed notebooks at full size.
test: $(STAMP) $(CHROMIUM)
	$(BIN)/ruff check liftcam_utils tests benchmarks
	rm -rf build/nbval
	$(BIN)/python -m liftcam_utils.app.workbook --quick-copies build/nbval
	LIFTCAM_REQUIRE_BROWSER=$(LIFTCAM_REQUIRE_BROWSER) $(BIN)/python -m pytest tests build/nbval

workbook: $(STAMP)
	$(BIN)/python -m liftcam_utils.app.workbook notebooks results

# maintainers: re-execute the committed notebooks in place after library changes
notebooks: $(STAMP)
	$(BIN)/python -m liftcam_utils.app.workbook --in-place

# a random token guards the app; only this machine can reach it (127.0.0.1). apps/jupyter holds its Voila template
# and, in config/voila.py, its settings: a websocket message limit that lets a 20-megapixel upload through
explorer: $(STAMP)
	@token=$$($(BIN)/python -c "import secrets; print(secrets.token_hex(24))"); \
	echo "LIFT-CAM explorer: open http://127.0.0.1:$(EXPLORER_PORT)/?token=$$token (Ctrl-C stops it)"; \
	JUPYTER_PATH="$(CURDIR)/apps/jupyter" JUPYTER_CONFIG_PATH="$(CURDIR)/apps/jupyter/config" \
	  $(BIN)/voila apps/explorer.ipynb --template=offline-lab --no-browser \
	  --Voila.ip=127.0.0.1 --port=$(EXPLORER_PORT) --Voila.port_retries=0 --token=$$token

# the course edition of notebooks 00 and 01 (docs/course.md): the student edition, and the grading of a folder of
# submissions, SUBMISSIONS/<student>/<notebook>.ipynb, into build/grades.csv (+ build/grades_feedback.csv, the hints)
student: $(STAMP)
	$(BIN)/python -m liftcam_utils.app.course student --out build/student

grade: $(STAMP)
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=<folder of <student>/<notebook>.ipynb>"; exit 2; }
	$(BIN)/python -m liftcam_utils.app.course grade "$(SUBMISSIONS)" --out build/grades.csv

# the course site (liftcam_utils.app.site): the committed, executed notebooks and docs/course.md, docs/statistics.md as
# static HTML pages that load nothing from the network; open build/site/index.html
site: $(STAMP)
	$(BIN)/python -m liftcam_utils.app.site --out build/site

clean:
	rm -rf $(VENV) results build
