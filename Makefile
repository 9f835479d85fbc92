# make demo : set up .venv, install dprune, run the main job on the embedded default (digits)
# make test : set up .venv, install dprune with its test extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: demo demo-reid test install clean

$(BIN)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q

# One torch thread: the report's numbers are then those the README quotes (a thread count changes
# the order of float sums, and with it the last digits of every run's accuracy).
demo: install
	OMP_NUM_THREADS=1 $(BIN)/dprune run --dataset digits --label-noise 0.1 --out $(DEMO_DIR)

# The ReID pipeline (BoT recipe, mAP/CMC) on a generated Market-1501-layout dataset, CPU-sized.
demo-reid: install
	$(BIN)/dprune synth-reid runs/market-synth --layout market1501
	$(BIN)/dprune run --task reid --dataset market1501 --root runs/market-synth --out runs/demo-reid \
	  --model resnet18 --record-epochs 4 --epochs 8 --batch-size 16 --ratio 0.5 \
	  --set reid_height=64 --set reid_width=32

clean:
	rm -rf $(VENV) runs build *.egg-info
