# syntax=docker/dockerfile:1.7
# One image for every DCOSTACK service; SERVICE picks which one runs (planner, compute, network, storage,
# monitor, metering, hybrid). `docker run -e SERVICE=planner dcostack` or, for the one-shot migrations,
# `docker run dcostack python -m services migrate`.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: resolve the locked dependencies into /app/.venv with uv ----------------------------------
FROM ${PYTHON_IMAGE} AS build
COPY --from=ghcr.io/astral-sh/uv:0.13 /uv /uvx /bin/
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app

# Dependencies first (cached until pyproject.toml or uv.lock change).
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --all-extras --no-install-project

# Then the project itself (not editable: the runtime stage needs no source tree to point at).
COPY pyproject.toml uv.lock README.md ./
COPY shared ./shared
COPY services ./services
COPY devcloud ./devcloud
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-extras --no-editable

# ---- runtime: the virtualenv and a non-root user, nothing else ----------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 dcostack \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin dcostack \
 && printf '%s\n' \
      '#!/bin/sh' \
      'set -eu' \
      '# With arguments, run them (e.g. `python -m services migrate`); without, run the service named by SERVICE.' \
      'if [ "$#" -gt 0 ]; then exec "$@"; fi' \
      ': "${SERVICE:?set SERVICE to one of planner, compute, network, storage, monitor, metering, hybrid}"' \
      'exec python -m "services.${SERVICE}"' \
      > /usr/local/bin/dcostack-entrypoint \
 && chmod 0755 /usr/local/bin/dcostack-entrypoint

COPY --from=build --chown=root:root /app/.venv /app/.venv

ENV PATH=/app/.venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DCOSTACK_HTTP_HOST=0.0.0.0 \
    DCOSTACK_HTTP_PORT=8080 \
    DCOSTACK_LOG_FORMAT=json
WORKDIR /app
USER 10001:10001
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["/usr/local/bin/dcostack-entrypoint"]
