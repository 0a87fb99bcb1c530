# The two commands: `make serve` and `make test`. Everything else is a step they depend on.
SHELL := /bin/bash
PYTHON_BASE ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 3000
export BENTOML_DO_NOT_TRACK := true
export BENTOML_HOME ?= $(CURDIR)/.bentoml

PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: install install-serve serve test test-service browser lint format import-models clean bench

# Two stamps: what serving needs (requirements/serve.txt), and everything (train.txt, dev.txt too).
install-serve: $(VENV)/.installed-serve
install: $(VENV)/.installed

$(VENV)/.installed-serve: pyproject.toml requirements/serve.txt
	test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.installed: $(VENV)/.installed-serve requirements/train.txt requirements/dev.txt
	$(PIP) -e '.[dev]'
	touch $@

# Serves the shipped models (imported into $(BENTOML_HOME) first) on $(HOST):$(PORT); docs/service.md.
serve: import-models
	$(VENV)/bin/bentoml serve service.service:SeqServe --host $(HOST) --port $(PORT)

test: install browser
	$(PY) -m pytest -q

# Debian's Chromium for the demo page's browser tests (tests/test_demo_browser.py, docs/demo.md).
# Where it cannot be installed (no root, no package mirror) those tests skip and say why.
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
		|| echo "chromium could not be installed: the browser tests will be skipped"

# The benchmarks (bench/README.md): serving (with each server's framework ceiling), decoding, start
# and size, training; about 33 min.
# Results in bench/results/. Timings are only meaningful on an otherwise idle machine.
bench: install
	$(PY) -m bench.decode
	$(PY) -m bench.startup
	$(PY) -m bench.training
	$(PY) -m bench.serving

# On a CUDA host: the CUDA tests (tests/test_cuda.py), then bench/gpu.py (bench/results/gpu_*.json);
# a few minutes. Elsewhere it says there is no CUDA device and exits 0.
.PHONY: gpu-check
gpu-check: install
	@if $(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		$(PY) -m pytest -q -m cuda tests/test_cuda.py && $(PY) -m bench.gpu --quick; \
	else echo "gpu-check: torch sees no CUDA device here; nothing to check (run it on a GPU host)"; fi

# Opt-in load run, not part of `make test` (docs/reliability.md): its own server, capacity, a
# steady run at capacity, twice capacity (goodput: 200s/s over capacity, at least 0.8), recovery;
# about 4 min. e.g. LOAD_ARGS="--duration 60".
LOAD_ARGS ?=
.PHONY: test-load
test-load: install
	$(PY) -m tests.reliability.load $(LOAD_ARGS)

# The service tests alone: helpers in-process, one real `bentoml serve`, `bentoml build` (~60 s).
test-service: install
	$(PY) -m pytest -q tests/test_service*.py tests/test_api_*.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# ---- models: the shipped defaults (pretrained/) and how they are made (docs/training.md) ----
.PHONY: import-models retrain data train-captioner train-translator evaluate-models export-models

# Import pretrained/* into the BentoML store ($(BENTOML_HOME)); skips models already there.
import-models: install-serve
	$(PY) -m training.export import-shipped

data: install
	test -f data/photo/dataset_photo.json || $(PY) -m training.data.photo
	test -f data/de-en/train.en || $(PY) -m training.data.ding
	test -f data/de-en-plus/train.en || $(PY) -m training.data.de_en_plus

# The captioners: English and German decoders on the same cached 224-px features, then calibrated
# (confidence and out-of-domain distance, training.calibrate). About 50 min here with feature caching.
train-captioner: data
	$(PY) -m training.train_captioner --preset default
	$(PY) -m training.calibrate --model runs/captioner_default/best
	$(PY) -m training.train_captioner --preset default --language de --name captioner_de
	$(PY) -m training.calibrate --model runs/captioner_de/best

# The translator: 8 epochs of the default preset on data/de-en-plus (about 45 min here), and the
# attention-free baseline at the same budget. Back-translation and averaging are options
# (docs/training.md) that did not pay at this size.
train-translator: data
	$(PY) -m training.train_translator --preset default
	$(PY) -m training.train_translator --preset default --attention none --name translator_noattn

evaluate-models:
	for split in test test_style test_composite; do \
		$(PY) -m training.evaluate --model runs/captioner_default/best --split $$split --methods greedy,beam5 \
			--output runs/captioner_default/eval_$$split.json || exit 1; done
	$(PY) -m training.evaluate --model runs/translator_default/best --baseline runs/translator_noattn/best --split test \
		--output runs/translator_default/eval_test.json
	$(PY) -m training.evaluate --model runs/translator_default/best --split test_everyday --methods greedy,beam5

export-models:
	$(PY) -m training.export save --model runs/captioner_default/best --ship-dir pretrained/captioner \
		--evaluation runs/captioner_default/eval_test.json \
		--train-command "python -m training.train_captioner --preset default"
	$(PY) -m training.export save --model runs/captioner_de/best --name captioner_de --ship-dir pretrained/captioner_de \
		--train-command "python -m training.train_captioner --preset default --language de --name captioner_de"
	$(PY) -m training.export save --model runs/translator_default/best --ship-dir pretrained/translator \
		--evaluation runs/translator_default/eval_test.json \
		--train-command "make train-translator (python -m training.train_translator --preset default: 8 epochs on data/de-en-plus)"

# Retrain the defaults from scratch, evaluate them and replace pretrained/ (about 2 h here).
retrain: data
	rm -rf runs/captioner_default runs/captioner_de runs/translator_default runs/translator_noattn
	$(MAKE) train-captioner train-translator evaluate-models export-models
