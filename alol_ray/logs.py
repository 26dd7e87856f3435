"""Console output: every stage logs through the ``alol`` logger, shown one line per message, as is.

Stage modules write ``log = logging.getLogger("alol")`` and ``log.info("[stage] ...")``; the ``alol``
command calls ``setup()`` once. Library users who never call it see nothing unless they configure
logging themselves. Progress bars stay tqdm bars on stderr.
"""

from __future__ import annotations

import logging
import sys

LOGGER = "alol"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of the message (a redirected or captured stdout too)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup(level: int = logging.INFO) -> logging.Logger:
    """One handler on the ``alol`` logger: the message alone, on stdout (idempotent)."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
