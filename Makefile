# Developer shortcuts. The scripts in scripts/ are the source of truth; CI runs .ci/run.
#
#   make check     format check, lint, type check, unit tests (no services needed)
#   make test-all  ./scripts/test: lint + all tests against local RabbitMQ/PostgreSQL
#   make demo      ./scripts/demo  (arguments: DEMO_ARGS=..., PYTEST_ARGS=... for unit/test-all)

VENV := .venv
BIN := $(VENV)/bin
SRC := processor schemas tests bench
PYTEST_ARGS ?=
DEMO_ARGS ?=

.DEFAULT_GOAL := check
.PHONY: help venv check format-check lint typecheck unit test-all demo

help:
	@sed -n '3,5s/^# *//p' Makefile

# Fast when nothing changed (see scripts/setup-venv).
venv:
	./scripts/setup-venv

check: format-check lint typecheck unit

format-check: venv
	$(BIN)/ruff format --check $(SRC)

lint: venv
	$(BIN)/ruff check $(SRC)

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-all:
	./scripts/test $(PYTEST_ARGS)

demo:
	./scripts/demo $(DEMO_ARGS)
