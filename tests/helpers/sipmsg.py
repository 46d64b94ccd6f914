"""Minimal SIP message text helpers for assertions in tests (not for the engine)."""

from __future__ import annotations

from dataclasses import dataclass, field

# RFC 3261 section 7.3.3 compact forms (plus a few common extensions).
COMPACT = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
}


def _canon(name: str) -> str:
    n = name.strip().lower()
    return COMPACT.get(n, n)


@dataclass
class SipMessage:
    """One SIP message as text, with a tiny header accessor.

    ``direction``/``transport``/``timestamp`` are filled when the message was
    read from a SIPp ``-message_file``.
    """

    text: str
    direction: str = ""
    transport: str = ""
    timestamp: str = ""
    _headers: list[tuple[str, str]] = field(default_factory=list, init=False, repr=False)
    _start: str = field(default="", init=False, repr=False)
    _body: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        head, sep, body = self.text.partition("\r\n\r\n")
        if not sep:
            head, _, body = self.text.partition("\n\n")
        lines = head.replace("\r\n", "\n").split("\n")
        self._start = lines[0] if lines else ""
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and self._headers:
                name, value = self._headers[-1]
                self._headers[-1] = (name, value + " " + line.strip())
                continue
            name, colon, value = line.partition(":")
            if colon:
                self._headers.append((_canon(name), value.strip()))
        self._body = body

    @property
    def start_line(self) -> str:
        return self._start

    @property
    def is_request(self) -> bool:
        return not self._start.startswith("SIP/")

    @property
    def method(self) -> str | None:
        """Request method (``None`` for responses)."""
        return self._start.split(" ", 1)[0] if self.is_request else None

    @property
    def status(self) -> int | None:
        """Response status code (``None`` for requests)."""
        if self.is_request:
            return None
        parts = self._start.split(" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None

    @property
    def request_uri(self) -> str | None:
        if not self.is_request:
            return None
        parts = self._start.split(" ")
        return parts[1] if len(parts) > 1 else None

    @property
    def body(self) -> str:
        return self._body

    @property
    def headers(self) -> list[tuple[str, str]]:
        """All headers in order as (lower-case long name, value)."""
        return list(self._headers)

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive, compact forms folded)."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """All header lines named ``name``, in order (comma lists are not split)."""
        key = _canon(name)
        return [v for n, v in self._headers if n == key]

    @property
    def call_id(self) -> str | None:
        return self.header("call-id")

    @property
    def cseq(self) -> tuple[int, str] | None:
        value = self.header("cseq")
        if not value:
            return None
        num, _, meth = value.partition(" ")
        return int(num), meth.strip()

    def __str__(self) -> str:
        return self.text
