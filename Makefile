# make demo : set up .venv, install dprune, run the main job on the embedded default (digits)
# make test : set up .venv, install dprune with its test extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: demo test install clean

$(BIN)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/dprune run --dataset digits --label-noise 0.1 --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) runs build *.egg-info
