# Two commands set everything up: `make demo` and `make test`.
# The install step re-runs only when setup.cfg or pyproject.toml change (stamp file).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Pinned here (not in setup.cfg) so users elsewhere can pick their own CUDA build.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: install test demo lint bench-quick clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]' $(TORCH)
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python tools/demo.py

lint: $(STAMP)
	$(BIN)/ruff check seguncert tools tests bench
	$(BIN)/ruff format --check seguncert tools tests bench

bench-quick: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]' $(TORCH)
	$(BIN)/python bench/mc_inference.py --quick --json
	$(BIN)/python bench/train_throughput.py --quick --json
	$(BIN)/python bench/video_fps.py --quick --json

clean:
	rm -rf runs demo_out .pytest_cache
