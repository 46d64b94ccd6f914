"""SIP message parsing and serialization (RFC 3261 §7, §20, §25).

Bytes in, bytes out.  A message keeps every header line as it arrived (name spelling, order,
unknown headers), so what the proxy does not touch is forwarded verbatim.  Values are parsed
lazily by the helpers in :mod:`engine.address`, only for the headers the proxy reads.
"""

from __future__ import annotations

import re
from typing import Final

from .address import NameAddr, Via, parse_name_addr, parse_number, parse_via, split_values
from .errors import SipError

ENCODING: Final = "utf-8"
ERRORS: Final = "surrogateescape"

#: RFC 3261 §7.3.3 and the IANA registry of compact header forms.
COMPACT_FORMS: Final[dict[str, str]] = {
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
    "b": "referred-by",
    "u": "allow-events",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
}

#: Header names as most user agents spell them, mapped straight to their keys.
_KNOWN_NAMES: Final[dict[str, str]] = {
    name: name.lower()
    for name in (
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Max-Forwards",
        "Content-Type",
        "Content-Length",
        "Record-Route",
        "Route",
        "Subject",
        "User-Agent",
        "Server",
        "Allow",
        "Supported",
        "Require",
        "Expires",
        "Session-Expires",
        "Min-SE",
        "Event",
        "Accept",
        "Reason",
        "Proxy-Require",
        "Authorization",
        "WWW-Authenticate",
        "Date",
        "Timestamp",
    )
} | {"Call-Id": "call-id", "Cseq": "cseq"}

#: Headers that must appear exactly once in a request (RFC 3261 §8.1.1, §20).
SINGLE_VALUED: Final = ("call-id", "from", "to", "cseq")

MAX_CSEQ: Final = 2**32 - 1
#: Max-Forwards is read as OpenSIPS's maxfwd module reads it (an unsigned 16-bit number);
#: values above 255 are lowered to 255 when forwarded.
MAX_MAX_FORWARDS: Final = 65535
#: No message body can be larger than the biggest message the shell accepts; this bound only
#: keeps ``int()`` away from absurd Content-Length values.
MAX_CONTENT_LENGTH: Final = 2**31 - 1

KNOWN_METHODS: Final = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "INFO",
        "REFER",
        "MESSAGE",
        "UPDATE",
    }
)


def header_key(name: str) -> str:
    """Canonical lowercase long form of a header name."""
    key = name.strip().lower()
    return COMPACT_FORMS.get(key, key)


class SipMessage:
    """A parsed request or response.

    ``headers`` is a list of ``[key, raw_line, value]``: ``key`` the canonical lowercase name,
    ``raw_line`` the line as received (folding kept) and ``value`` the unfolded, stripped value.
    """

    __slots__ = ("method", "ruri", "status", "reason", "headers", "body", "has_length", "_cache")

    def __init__(
        self,
        method: str | None,
        ruri: str,
        status: int,
        reason: str,
        headers: list[list[str]],
        body: bytes,
        has_length: bool = True,
    ) -> None:
        self.method = method
        self.ruri = ruri
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.has_length = has_length
        self._cache: dict[str, object] = {}

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def request(
        cls, method: str, ruri: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> SipMessage:
        """A new request from ``(name, value)`` pairs (Content-Length is added)."""
        hdrs = [[header_key(n), f"{n}: {v}", v] for n, v in headers]
        hdrs.append(["content-length", f"Content-Length: {len(body)}", str(len(body))])
        return cls(method, ruri, 0, "", hdrs, body)

    # -- header access ------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        """Value of the first header with canonical name ``key``."""
        for h in self.headers:
            if h[0] == key:
                return h[2]
        return None

    def get_all(self, key: str) -> list[str]:
        """All values of a header, comma-separated values split apart."""
        out: list[str] = []
        for h in self.headers:
            if h[0] == key:
                out.extend(split_values(h[2]))
        return out

    def count(self, key: str) -> int:
        return sum(1 for h in self.headers if h[0] == key)

    def add_first(self, name: str, value: str) -> None:
        self.headers.insert(0, [header_key(name), f"{name}: {value}", value])
        self._cache.clear()

    def add_before(self, key: str, name: str, value: str) -> None:
        """Insert a header before the first one named ``key`` (or at the end)."""
        line = [header_key(name), f"{name}: {value}", value]
        for i, h in enumerate(self.headers):
            if h[0] == key:
                self.headers.insert(i, line)
                break
        else:
            self.headers.append(line)
        self._cache.clear()

    def add_last(self, name: str, value: str) -> None:
        self.headers.append([header_key(name), f"{name}: {value}", value])
        self._cache.clear()

    def set(self, name: str, value: str) -> None:
        """Replace every header ``name`` with one line (appended if absent)."""
        key = header_key(name)
        line = [key, f"{name}: {value}", value]
        headers = self.headers
        for i, h in enumerate(headers):
            if h[0] == key:
                headers[i] = line
                if any(x[0] == key for x in headers[i + 1 :]):
                    headers[i + 1 :] = [x for x in headers[i + 1 :] if x[0] != key]
                break
        else:
            headers.append(line)
        self._cache.pop(key, None)

    def remove(self, key: str) -> None:
        self.headers = [h for h in self.headers if h[0] != key]
        self._cache.clear()

    def pop_first_value(self, key: str) -> str | None:
        """Remove the first value of a (possibly comma-combined) header and return it."""
        for i, h in enumerate(self.headers):
            if h[0] != key:
                continue
            values = split_values(h[2])
            first = values[0] if values else ""
            if len(values) <= 1:
                del self.headers[i]
            else:
                name = h[1].split(":", 1)[0].rstrip()
                rest = ", ".join(values[1:])
                self.headers[i] = [key, f"{name}: {rest}", rest]
            self._cache.clear()
            return first
        return None

    # -- parsed views (cached) ----------------------------------------------------------------

    @property
    def via(self) -> Via:
        """The top Via."""
        v = self._cache.get("via")
        if v is None:
            raw = self.get("via")
            if raw is None:
                raise SipError(400, "Missing Via")
            v = self._cache["via"] = parse_via(split_values(raw)[0] if "," in raw else raw)
        return v  # type: ignore[return-value]

    def _name_addr(self, key: str) -> NameAddr:
        na = self._cache.get(key)
        if na is None:
            raw = self.get(key)
            if raw is None:
                raise SipError(400, f"Missing {key.title()}")
            na = self._cache[key] = parse_name_addr(raw)
        return na  # type: ignore[return-value]

    @property
    def from_(self) -> NameAddr:
        return self._name_addr("from")

    @property
    def to(self) -> NameAddr:
        return self._name_addr("to")

    @property
    def contact(self) -> NameAddr | None:
        if self.get("contact") is None:
            return None
        return self._name_addr("contact")

    @property
    def callid(self) -> str:
        v = self.get("call-id")
        if v is None:
            raise SipError(400, "Missing Call-ID")
        return v

    @property
    def cseq(self) -> tuple[int, str]:
        c = self._cache.get("cseq")
        if c is None:
            c = self._cache["cseq"] = parse_cseq(self.get("cseq"))
        return c  # type: ignore[return-value]

    # -- serialization ------------------------------------------------------------------------

    def start_line(self) -> str:
        if self.method is not None:
            return f"{self.method} {self.ruri} SIP/2.0"
        return f"SIP/2.0 {self.status} {self.reason}"

    def to_bytes(self) -> bytes:
        parts = [self.start_line()]
        parts.extend([h[1] for h in self.headers])
        if not self.has_length:
            parts.append(f"Content-Length: {len(self.body)}")
        parts.append("")
        parts.append("")
        return "\r\n".join(parts).encode(ENCODING, ERRORS) + self.body

    def __repr__(self) -> str:
        return f"<SipMessage {self.start_line()!r}>"


def sdp_of(msg: SipMessage) -> str | None:
    """The SDP body of a message, or None."""
    if not msg.body:
        return None
    ctype = msg.get("content-type")
    if ctype is None or not ctype.lower().startswith("application/sdp"):
        return None
    return msg.body.decode(ENCODING, ERRORS)


def parse_cseq(value: str | None) -> tuple[int, str]:
    if value is None:
        raise SipError(400, "Missing CSeq")
    num, _, method = value.strip().partition(" ")
    method = method.strip()
    if not method:
        raise SipError(400, "Malformed CSeq")
    return parse_number(num, MAX_CSEQ, "CSeq"), method


_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


def _is_token(text: str) -> bool:
    return _TOKEN.fullmatch(text) is not None


def parse(data: bytes, *, stream: bool = False) -> SipMessage:
    """Parse one message.

    For a datagram (``stream`` false) the body is framed by Content-Length and any remainder is
    ignored (RFC 3261 §18.3); a missing Content-Length means the rest of the datagram.  For a
    stream, ``data`` must already be exactly one framed message (see :mod:`engine.framing`).
    Raises :class:`SipError` with the status a request deserves.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if data.endswith(b"\r\n"):
            end = len(data) - 2
            body_start = len(data)
        else:
            raise SipError(400, "Incomplete header block")
    else:
        body_start = end + 4
    head = data[:end].decode(ENCODING, ERRORS)
    lines = head.split("\r\n")
    first = lines[0]
    method: str | None
    if first.startswith("SIP/"):
        version, _, rest = first.partition(" ")
        code, _, reason = rest.partition(" ")
        if version != "SIP/2.0":
            raise SipError(0, "Unsupported SIP version in response")
        if (
            len(code) != 3
            or not (code.isascii() and code.isdigit())  # "２００" is no status code
            or not 100 <= int(code) <= 699
        ):
            raise SipError(0, "Bad status code")
        method, ruri, status = None, "", int(code)
    else:
        parts = first.split(" ")
        if len(parts) != 3:
            raise SipError(400, "Malformed Request-Line")
        method, ruri, version = parts
        if version != "SIP/2.0":
            if version.startswith("SIP/"):
                raise SipError(505, "Version Not Supported")
            raise SipError(400, "Malformed Request-Line")
        if not _is_token(method):
            raise SipError(400, "Bad Method")
        if not ruri or ruri[0] == "<" or ":" not in ruri:
            raise SipError(400, "Malformed Request-URI")
        status, reason = 0, ""

    headers: list[list[str]] = []
    lengths: list[str] = []
    known = _KNOWN_NAMES
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            if not headers:
                raise SipError(400, "Continuation line before any header")
            prev = headers[-1]
            prev[1] = f"{prev[1]}\r\n{line}"
            prev[2] = f"{prev[2]} {line.strip()}".strip()
            if prev[0] == "content-length":
                lengths[-1] = prev[2]
            continue
        colon = line.find(":")
        if colon <= 0:
            raise SipError(400, "Malformed header line")
        name = line[:colon]
        key = known.get(name)
        if key is None:
            key = name.rstrip().lower()
            if len(key) == 1:
                key = COMPACT_FORMS.get(key, key)
        value = line[colon + 1 :].strip()
        headers.append([key, line, value])
        if key == "content-length":
            lengths.append(value)
    length: int | None = None
    for value in lengths:
        n = parse_number(value, MAX_CONTENT_LENGTH, "Content-Length")
        if length is not None and n != length:
            raise SipError(400, "Conflicting Content-Length values")
        length = n
    has_length = length is not None
    if length is None:
        if stream:
            length = 0
        else:
            length = len(data) - body_start
    if body_start + length > len(data):
        raise SipError(400, "Content-Length larger than message")
    body = data[body_start : body_start + length]
    return SipMessage(method, ruri, status, reason, headers, body, has_length)


def validate_request(msg: SipMessage) -> None:
    """Checks a proxy makes before acting on a request (RFC 3261 §16.3); raises SipError."""
    counts = {"call-id": 0, "from": 0, "to": 0, "cseq": 0, "via": 0, "max-forwards": 0}
    vias = []
    contacts = []
    for h in msg.headers:
        key = h[0]
        if key in counts:
            counts[key] += 1
            if key == "via":
                vias.append(h[2])
        elif key == "contact":
            contacts.append(h[2])
    for key in SINGLE_VALUED:
        n = counts[key]
        if n == 0:
            raise SipError(400, f"Missing {_PRETTY[key]}")
        if n > 1:
            raise SipError(400, f"Multiple {_PRETTY[key]} headers")
    if not vias:
        raise SipError(400, "Missing Via")
    msg.via  # noqa: B018 - parses and caches the top Via
    for i, raw in enumerate(vias):
        if i or "," in raw:
            for v in split_values(raw)[0 if i else 1 :]:
                parse_via(v)
    for key in ("from", "to"):
        raw = msg.get(key) or ""
        if "," in raw and len(split_values(raw)) != 1:
            raise SipError(400, f"Multiple {_PRETTY[key]} values")
        msg._name_addr(key)
    ruri = msg.ruri
    if ruri[:4].lower() in ("sip:", "sips"):
        host_part = ruri.rpartition("@")[2]
        if "?" in host_part:
            raise SipError(400, "Headers are not allowed in the Request-URI")
        hostport = host_part.partition(";")[0]
        if "@" not in ruri:
            hostport = hostport.partition(":")[2]  # after the scheme
        if hostport.count(":") > 1 and not hostport.startswith("["):
            raise SipError(400, "IPv6 address without brackets in the Request-URI")  # RFC 5118
    num, method = msg.cseq
    if method != msg.method:
        if msg.method not in KNOWN_METHODS:
            raise SipError(501, "Not Implemented")
        raise SipError(400, "CSeq method does not match Request-Line")
    if counts["max-forwards"] > 1:
        raise SipError(400, "Multiple Max-Forwards headers")
    if counts["max-forwards"]:
        parse_number(msg.get("max-forwards") or "", MAX_MAX_FORWARDS, "Max-Forwards")
    for i, raw in enumerate(contacts):
        if i == 0 and "," not in raw and raw != "*":
            msg._name_addr("contact")  # parsed once, cached for the dialog
        elif raw != "*":
            for value in split_values(raw):
                parse_name_addr(value)
    msg.get_all("proxy-require")  # a malformed list is a 400 here, not an error later
    branch = msg.via.branch
    if branch is not None and branch == "z9hG4bK":
        raise SipError(400, "Missing transaction identifier in Via branch")


_PRETTY: Final = {"call-id": "Call-ID", "from": "From", "to": "To", "cseq": "CSeq"}
