"""Structured logs: JSON in containers, console on a TTY, with correlation ids bound per event."""

from __future__ import annotations

import logging
import sys

import structlog

from shared.config import LogFormat


def configure_logging(service: str, level: str = "INFO", fmt: LogFormat = LogFormat.AUTO) -> None:
    use_json = fmt == LogFormat.JSON or (fmt == LogFormat.AUTO and not sys.stderr.isatty())
    shared_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *shared_processors,
            structlog.processors.dict_tracebacks if use_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries log through stdlib logging; keep them quiet unless something is wrong.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    # aiokafka logs every failed reconnect at ERROR, hundreds a second during a broker outage; our relay,
    # consumers and /readyz report the outage once, with what to do.
    if level.upper() != "DEBUG":
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
