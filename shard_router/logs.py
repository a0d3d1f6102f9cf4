"""Log set-up: human-readable lines on stderr, or JSON lines (SAGA_LOG_JSON=1) for a log pipeline."""

from __future__ import annotations

import sys

from loguru import logger


def configure(json: bool, component: str = "router") -> None:
    logger.remove()
    if json:
        logger.add(sys.stderr, serialize=True, level="INFO")
    else:
        logger.add(
            sys.stderr,
            level="INFO",
            format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} " + component + " {message}",
        )
