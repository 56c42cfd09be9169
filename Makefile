# One set of commands for developers, pre-commit and CI.
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN = $(UV) run --frozen

.PHONY: install check test up contracts bench clean

install:  ## Install the platform and its dev tools into .venv (from uv.lock)
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --all-extras

check: install  ## Format, lint, types, import rules, fresh event and API contracts
	$(RUN) ruff format --check .
	$(RUN) ruff check .
	$(RUN) mypy
	$(RUN) lint-imports
	$(RUN) python -m shared.events.generate --check
	$(RUN) python -m services.cli.openapi --check

test: install  ## The whole test suite against real PostgreSQL, Kafka protocol broker and devcloud
	$(RUN) pytest

up: install  ## Start the platform locally (broker, PostgreSQL, all services) and self-check it
	$(RUN) dcostack up --plan examples/two-tier.yaml

contracts:  ## Regenerate the event JSON Schemas and AsyncAPI document, and the OpenAPI documents and plan schema (docs/api/)
	$(RUN) python -m shared.events.generate
	$(RUN) python -m services.cli.openapi

bench: install  ## Print bus throughput and latency numbers
	$(RUN) python -m bench.bus
