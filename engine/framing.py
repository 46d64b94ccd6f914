"""Message framing on a stream transport (RFC 3261 §18.3): Content-Length delimits messages.

Sans-I/O: feed it bytes as they arrive, get back whole messages.  A framing error (bad or
missing length, oversized message) is fatal for the connection, since the stream position is
lost; the caller answers from ``rejected`` (the header block it refused, for the 400 or 513
a request deserves: ``Engine.stream_error``) and closes it.
"""

from __future__ import annotations

import re

from .errors import SipError

_CONTENT_LENGTH = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


class StreamFramer:
    __slots__ = ("_buf", "max_size", "rejected")

    def __init__(self, max_size: int = 65536) -> None:
        self._buf = bytearray()
        self.max_size = max_size
        #: After a SipError: the start of the message refused (at most ``max_size`` bytes).
        self.rejected = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return every complete message now in the buffer."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while True:
            # Keep-alive CRLFs between messages (RFC 5626 §3.5.1) are skipped.
            start = 0
            while buf[start : start + 2] == b"\r\n":
                start += 2
            if start:
                del buf[:start]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_size:
                    self.rejected = bytes(buf[: self.max_size])
                    raise SipError(513, "Message Too Large")
                return out
            head = bytes(buf[: end + 2])
            self.rejected = head
            lengths = {m.group(1).strip() for m in _CONTENT_LENGTH.finditer(head)}
            if len(lengths) > 1:
                raise SipError(400, "Conflicting Content-Length values")
            if not lengths:
                length = 0
            else:
                text = lengths.pop()
                if not text.isdigit():  # bytes.isdigit() is ASCII only
                    raise SipError(400, "Malformed Content-Length")
                if len(text.lstrip(b"0")) > 10:  # more than any max_size: spare int() the work
                    raise SipError(513, "Message Too Large")
                length = int(text)
            total = end + 4 + length
            if total > self.max_size:
                raise SipError(513, "Message Too Large")
            if len(buf) < total:
                return out
            out.append(bytes(buf[:total]))
            del buf[:total]

    @property
    def pending(self) -> int:
        return len(self._buf)
