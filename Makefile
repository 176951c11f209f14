# Two commands do all the set-up on a fresh machine:
#   make app    installs into .venv and starts the dashboard
#   make test   installs into .venv (and Chromium for the browser tests, and a C++ compiler for torch.compile if
#               there is none) and runs the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
IWAE_DATA_DIR ?= $(abspath ../shared/data)
export IWAE_DATA_DIR

.PHONY: app test install chromium compiler bench lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[app,test]'
	@# builds the C++ kernels once (Philox's draws, tanh, softplus, the likelihood, Flipout's passes; about a minute, cached), so that no first draw waits for them
	-$(BIN)/python -c "from iwae_core.maths import rng; print('noise draws:', rng.backend())"
	touch $@

chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
	  echo "Chromium not installed (need root for apt-get): browser tests and PNG/SVG/PDF export are unavailable"

compiler:
	@command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++; } || \
	  echo "No C++ compiler (need root for apt-get): training runs uncompiled (iwae train --compile)"

app: install
	$(BIN)/streamlit run app.py

test: install chromium compiler
	$(BIN)/python -m pytest -ra

bench: install
	$(BIN)/iwae bench

lint: install
	$(BIN)/ruff check .
