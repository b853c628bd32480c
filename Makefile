# The two commands a fresh machine needs:
#   make demo   sets up the venv and runs the main job (closed-loop demo on the shipped default model)
#   make test   sets up the venv, lints, and runs the test suite
VENV ?= .venv
SHELL := /bin/bash

.PHONY: setup demo test lint bench clean

setup:
	@./scripts/setup_venv.sh

demo: setup
	@source scripts/ros_env.sh && cd "$$(mktemp -d)" && OMP_NUM_THREADS=2 "$(CURDIR)/$(VENV)/bin/seqplanner" demo

lint: setup
	@$(VENV)/bin/ruff check .

test: setup lint
	@source scripts/ros_env.sh && OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q tests; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
