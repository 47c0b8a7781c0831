# BoneScan-Triton. `make demo` and `make test` set up everything they need on a fresh machine
# (Debian packages, a pinned .venv) and are quick when nothing changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: install test lint typecheck unit demo demo-cluster demo-pacs clean help

help:
	@echo "make demo   - synthesise data, train, export, serve with Triton, segment, report ($(DEMO_OUT)/report.md)"
	@echo "make demo-cluster - after make demo: two Triton replicas behind nginx, Prometheus, the query that shows both answered"
	@echo "make demo-pacs - after make demo: a study through a local Orthanc and the DICOM node, its SEG and SR back in Orthanc"
	@echo "make test   - lint, type-check (incl. the TensorRT code against tensorrt-stubs), all tests with a real Triton server"

$(APT_STAMP): tools/apt.sh
	@bash tools/apt.sh
	@mkdir -p $(VENV) && touch $@

$(STAMP): requirements/lock.txt pyproject.toml | $(APT_STAMP)
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v == (3, 11) else "Python 3.11 is needed (the Triton python-backend stub embeds libpython3.11); got %d.%d. Set PYTHON=python3.11" % v)'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing pinned dependencies into $(VENV) (first time: a few minutes)"
	@$(BIN)/pip install -q --disable-pip-version-check pip==24.3.1 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/pip install -q -r requirements/lock.txt 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/pip install -q --no-deps tensorrt-stubs==10.13.0.35.1 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import torch, transformers, onnxruntime, tritonclient.grpc, pytriton, bonescan" \
		|| { echo "dependency install failed"; exit 1; }
	@touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff check src client export benchmarks model_repository tests
	@# the Dockerfile `bonescan repo build` writes for the NGC container (pinned pip installs, nothing at run time)
	$(BIN)/python -c "from bonescan.serving.launch import dockerfile; print(dockerfile(), end='')" | $(BIN)/hadolint -
	@# the CPU image of the Kubernetes cpu overlay (deploy/docker/Dockerfile.cpu)
	$(BIN)/hadolint deploy/docker/Dockerfile.cpu

$(VENV)/typings/.ok: tools/trt_stubs.py $(STAMP)
	@$(BIN)/python tools/trt_stubs.py $(VENV)/typings && touch $@

# mypy over the whole package; the TensorRT code cannot run here: mypy checks its TensorRT calls against tensorrt-stubs
typecheck: install $(VENV)/typings/.ok
	MYPYPATH=$(VENV)/typings $(BIN)/mypy --follow-imports=silent src/bonescan client export benchmarks

unit: install
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: install lint typecheck unit

demo: install
	$(BIN)/bonescan demo --out $(DEMO_OUT)

# after `make demo`: its repository on two replicas behind nginx, scraped by a real Prometheus
demo-cluster: install
	$(BIN)/bonescan demo-cluster --out $(DEMO_OUT)

# after `make demo`: a study C-STOREd into a local Orthanc, forwarded to the DICOM node, SEG + SR back
demo-pacs: install
	$(BIN)/bonescan demo-pacs --out $(DEMO_OUT)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache build *.egg-info src/*.egg-info
