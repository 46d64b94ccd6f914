"""Log lines that cannot flood: at most one per cause and period, the rest counted.

Code that runs per packet (a bug every message hits, a peer sending garbage on each new
connection, a request the MI refuses) would otherwise write a line per packet: the disk
fills and the one useful line drowns.  The line that follows a quiet period says how many
were left out.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

#: Causes remembered at most (the oldest is forgotten first): causes that carry a host name
#: come from the network, and must not grow a table without bound.
MAX_CAUSES = 1024


class RateLimitedLog:
    """``logger`` with a budget: one line per ``cause`` every ``period`` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        period: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.period = period
        self.clock = clock
        #: cause -> (when its last line was written, lines left out since)
        self._causes: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def log(self, level: int, cause: str, msg: str, *args: Any, exc_info: bool = False) -> bool:
        """Write the line unless ``cause`` had one less than ``period`` ago; True if written."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self.clock()
        last = self._causes.get(cause)
        if last is not None and now - last[0] < self.period:
            self._causes[cause] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            msg = f"{msg} (%d more like this in the last %.0f s)"
            args = (*args, last[1], now - last[0])
        self._causes[cause] = (now, 0)
        self._causes.move_to_end(cause)
        if len(self._causes) > MAX_CAUSES:
            self._causes.popitem(last=False)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def info(self, cause: str, msg: str, *args: Any) -> bool:
        return self.log(logging.INFO, cause, msg, *args)

    def warning(self, cause: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, cause, msg, *args)

    def exception(self, cause: str, msg: str, *args: Any) -> bool:
        """An ERROR line with the current exception's traceback (call from ``except``)."""
        return self.log(logging.ERROR, cause, msg, *args, exc_info=True)


def exception_cause(exc: BaseException) -> str:
    """One cause per bug: the exception's type and the line that raised it."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
    return f"{type(exc).__name__} at {where}"
