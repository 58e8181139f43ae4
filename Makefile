# Two commands matter: `make run` (set up, build small bundles if absent, serve on :8000) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# CPU build by default; on a GPU machine: make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
DATA ?= ../shared/data/dailydialog
PRESET ?= small
# Bundles of the small preset in artifacts/, of any other in artifacts-<preset>/ (so
# `make run PRESET=tiny` never mixes its bundles with small's); runs/ keeps one folder per preset.
ARTIFACTS ?= $(if $(filter small,$(PRESET)),artifacts,artifacts-$(PRESET))
RUNS ?= runs

.PHONY: setup run reply build test test-slow test-live live-deps lint bench probe gpu-check device-stage compose-check clean FORCE

setup: $(VENV)/.installed

# The stamp depends on pyproject.toml and on the torch spec it was made with ($(VENV)/.torch-spec):
# `make setup TORCH_SPEC=...` after a first setup uninstalls torch and installs the new spec.
TORCH_INSTALLED := $(strip $(shell cat $(VENV)/.torch-spec 2>/dev/null))
ifneq ($(TORCH_INSTALLED),$(strip $(TORCH_SPEC)))
$(VENV)/.installed: FORCE
endif

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if [ -n "$(TORCH_INSTALLED)" ] && [ "$(TORCH_INSTALLED)" != "$(strip $(TORCH_SPEC))" ]; then \
	  echo "TORCH_SPEC changed ($(TORCH_INSTALLED) -> $(strip $(TORCH_SPEC))): reinstalling torch"; \
	  $(PY) -m pip uninstall -q -y torch; \
	fi
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[train,serve,dev]"
	echo '$(strip $(TORCH_SPEC))' > $(VENV)/.torch-spec
	touch $@

build: setup
	$(PY) -m training build --preset $(PRESET) --data $(DATA) --out $(ARTIFACTS) --runs $(RUNS)

run: setup
	@if [ ! -f $(ARTIFACTS)/retriever-g2r/manifest.json ] \
	  || { [ -d $(dir $(DATA))diasafety ] && [ ! -f $(ARTIFACTS)/safety-classifier/manifest.json ]; }; then \
	  echo "bundles missing in $(ARTIFACTS)/: building the '$(PRESET)' preset first (finished stages are kept)"; \
	  $(MAKE) --no-print-directory build; \
	fi
	DIALOGUE_MODELS_DIR=$(ARTIFACTS) $(PY) -m service

reply: setup
	$(PY) -m training reply --bundle $(ARTIFACTS)/generator-nd --bundle $(ARTIFACTS)/retriever-g2r

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

# The live tests CI runs after `make test`: the chat page in headless Chromium (screenshots at 390,
# 768 and 1200 px), Prometheus scraping a running service and evaluating the alerting rules, and
# promtool checking and unit-testing the rules (tests/test_alerts.py, which `make test` skips
# without promtool; here it must run). live-deps installs Playwright (the `browser` extra) and,
# only when missing, Debian's chromium and prometheus (apt-get, as root).
# SCREENSHOTS=dir keeps the chat page's screenshots.
live-deps: $(VENV)/.browser
	.ci/install-live-test-deps

$(VENV)/.browser: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[browser]"
	touch $@

test-live: live-deps
	CHAT_SCREENSHOTS=$(SCREENSHOTS) $(PY) -m pytest -q -m slow \
	  tests/test_chat_page.py tests/test_deploy_configs.py tests/test_alerts.py
	DIALOGUE_REQUIRE_PROMTOOL=1 $(PY) -m pytest -q tests/test_alerts.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup
	$(VENV)/bin/pip install -q -e ".[bench]"
	$(PY) -m benchmarks.decoding --out reports/decoding_benchmark

# What a user sees: 34 everyday turns through the service built on $(ARTIFACTS), every reply side
# by side with the figures (benchmarks/everyday_probe.py); printed, nothing written.
probe: setup
	$(PY) -m benchmarks.everyday_probe --artifacts $(ARTIFACTS) --data $(DATA)

# On a GPU machine (CUDA torch: make setup TORCH_SPEC=...): fp16 greedy = fp32 on 100 test contexts,
# continuous = batch decoding, 20-token speed of the small bundle and a paper-sized model, FAISS on
# the GPU where installed; reports/gpu_check.{json,md}. Without CUDA it says so and exits 0.
gpu-check: setup
	$(PY) -m benchmarks.gpu_check --artifacts $(ARTIFACTS) --data $(DATA) --out reports/gpu_check

# Before a call of a lent GPU machine (the device tool), which gets the checkout and nothing beside
# it: DailyDialog into .devdata/ and faiss-cpu and nltk wheels (its image has neither; session 24
# lost a comparison to the missing nltk) for its Python 3.12 into .whl/, both
# git-ignored, for `carry`. Then, as reports/commands/nd_paper_gpu.sh says: run(command="bash
# reports/commands/nd_paper_gpu.sh", carry=[".whl", ".devdata"], timeout_s=600).
device-stage: setup
	rm -rf .devdata/dailydialog && mkdir -p .devdata && cp -r $(DATA) .devdata/dailydialog
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 -d .whl "faiss-cpu==$$($(PY) -c 'import faiss; print(faiss.__version__)')" \
	  "nltk==$$($(PY) -c 'import nltk; print(nltk.__version__)')"
	@du -sh .devdata .whl

# Deployment configs (docker/, docker-compose.yml) parse and agree, alerting rules included;
# promtool and `docker compose config` too where installed. The live Prometheus and chat-page
# browser tests are in `test-slow`.
compose-check: setup
	$(PY) -m pytest -q tests/test_deploy_configs.py tests/test_alerts.py
	@if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then \
	  docker compose config --quiet && echo "docker compose config: ok"; \
	else echo "docker compose not installed: skipped 'docker compose config'"; fi

clean:
	rm -rf $(RUNS) .pytest_cache .mypy_cache .ruff_cache
