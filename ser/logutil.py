"""Logging set-up shared by the stage scripts and the CLI."""
from __future__ import annotations

import logging
import os


def setup_logging(level: str | None = None) -> None:
    """Timestamped INFO logs on stderr (LOGLEVEL overrides)."""
    logging.basicConfig(level=(level or os.environ.get("LOGLEVEL", "INFO")).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
