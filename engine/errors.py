"""The one exception of the SIP engine: a message that cannot be processed, and its answer."""

from __future__ import annotations


class SipError(Exception):
    """A message that cannot be processed; ``status`` is the response a request deserves.

    ``status`` 0 means "drop silently" (responses, garbage without a usable Via).
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
