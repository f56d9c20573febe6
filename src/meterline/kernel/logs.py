"""Process-wide logging set-up. Modules log with logging.getLogger(__name__) and pass
ids (session, account) as arguments; tokens and secrets are never logged."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
