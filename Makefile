# The two things a newcomer runs. Both set up .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test sim clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

# A local 3-node cluster from etc/paxosd.yaml, a short write load, throughput and latency.
demo: setup
	$(BIN)/paxosd demo --config etc/paxosd.yaml

test: setup
	$(BIN)/python -m pytest -q

# The simulator, longer than the suite runs it: make sim SEEDS=10000
SEEDS ?= 1000
sim: setup
	$(BIN)/python -m tests.simulator --seeds $(SEEDS) --jobs 2

clean:
	rm -rf build *.egg-info fastpath/*.so fastpath/_fastpath.c data
