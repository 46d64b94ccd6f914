"""Header value grammar: comma lists, name-addr, URIs and Via (RFC 3261 §19, §20, §25).

Liberal where RFC 4475 asks for liberality (LWS around ``;``, ``=`` and ``/``, no space before
``<``), strict where a mistake would be propagated (unbalanced quotes, empty list elements,
stray separators).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .errors import SipError


def _err(reason: str) -> Exception:
    return SipError(400, reason)


def parse_number(text: str, maximum: int, what: str) -> int:
    """A header's decimal number: ASCII digits only (``str.isdigit()`` also takes ``²`` and
    ``١``, which ``int()`` refuses or reads), at most ``maximum``; the digits are counted
    before ``int()`` so that a kilobyte of nines costs nothing.  400 otherwise."""
    if not text.isascii() or not text.isdigit():
        raise _err(f"Malformed {what}")
    if len(text) > 9:  # leading zeros, or past a bound: never hand int() a thousand digits
        text = text.lstrip("0") or "0"
        if len(text) > len(str(maximum)):
            raise _err(f"{what} too large")
    number = int(text)
    if number > maximum:
        raise _err(f"{what} too large")
    return number


_ANGLED_LIST = re.compile(r"(?:[^,<]|<[^>]*>?)+")


def split_values(value: str) -> list[str]:
    """Split a header value at commas outside quotes and ``<>``; elements are stripped."""
    if "," not in value:
        value = value.strip()
        return [value] if value else []
    if '"' not in value:
        if "<" not in value:
            return [v.strip() for v in value.split(",")]
        # Keep empty elements visible (``a,,b``) so that callers can reject them.
        out: list[str] = []
        pos = 0
        for m in _ANGLED_LIST.finditer(value):
            out.extend("" for _ in range(value.count(",", pos, m.start()) - (1 if pos else 0)))
            out.append(m.group().strip())
            pos = m.end()
        if value.rstrip().endswith(","):
            out.append("")
        return out
    out = []
    start = 0
    quoted = False
    angle = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == "," and not angle:
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    if quoted:
        raise _err("Unterminated quoted string")
    out.append(value[start:].strip())
    return out


def parse_params(text: str) -> dict[str, str | None]:
    """``;a=b;c`` into a dict; names lowercased, LWS ignored, empty parameters refused."""
    params: dict[str, str | None] = {}
    if not text.strip():
        return params
    parts = _split_outside_quotes(text, ";")
    if parts[0].strip():
        raise _err("Unexpected text before parameters")
    parts = parts[1:]
    for part in parts:
        name, eq, val = part.partition("=")
        name = name.strip()
        if not name or " " in name:
            raise _err("Malformed parameter")
        if eq:
            v = val.strip()
            if not v:
                raise _err(f"Empty value for parameter {name}")
            params[name.lower()] = v
        else:
            params[name.lower()] = None
    return params


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    if '"' not in text:
        return text.split(sep)
    out = []
    start = 0
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == sep:
            out.append(text[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise _err("Unterminated quoted string")
    out.append(text[start:])
    return out


@dataclass(slots=True)
class NameAddr:
    """``display <uri>;params`` or ``uri;params``."""

    display: str
    uri: str
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


#: The common shape ``[display] <uri>;p=v;...`` with plain tokens: parsed by one regex.
_SIMPLE_NAME_ADDR = re.compile(
    r'\s*(?:("[^"\\]*")|([-\w.!%*+`\'~ ]*?))\s*<([^<>\s"]+)>\s*'
    r"((?:;[-\w.!%*+`'~]+(?:=[-\w.!%*+`'~:\[\]]+)?)*)\s*$"
)


def parse_name_addr(value: str) -> NameAddr:
    m = _SIMPLE_NAME_ADDR.match(value)
    if m is not None and ":" in m.group(3):
        quoted, plain, uri, ptext = m.groups()
        params: dict[str, str | None] = {}
        if ptext:
            for part in ptext[1:].split(";"):
                name, eq, val = part.partition("=")
                params[name.lower()] = val if eq else None
        return NameAddr(quoted or (plain or "").strip(), uri, params)
    return _parse_name_addr_slow(value)


def _parse_name_addr_slow(value: str) -> NameAddr:
    value = value.strip()
    if not value:
        raise _err("Empty address")
    display = ""
    rest = value
    if value[0] == '"':
        i = 1
        while i < len(value):
            c = value[i]
            if c == "\\":
                i += 2
                continue
            if c == '"':
                break
            i += 1
        else:
            raise _err("Unterminated quoted display name")
        display = value[: i + 1]
        rest = value[i + 1 :].lstrip()
        if not rest.startswith("<"):
            raise _err("Quoted display name without <URI>")
    lt = rest.find("<")
    if lt >= 0:
        if not display:
            display = rest[:lt].strip()
            if display and any(c in display for c in '<>,;"@'):
                raise _err("Malformed display name")
        gt = rest.find(">", lt)
        if gt < 0:
            raise _err("Unterminated <URI>")
        uri = rest[lt + 1 : gt]
        if uri != uri.strip() or not uri:
            raise _err("Whitespace inside <URI>")
        params = parse_params(rest[gt + 1 :])
    else:
        uri, _, ptext = rest.partition(";")
        uri = uri.strip()
        if " " in uri or not uri:
            raise _err("Malformed addr-spec")
        if "?" in uri.rpartition("@")[2] or "," in uri:
            raise _err("URI with headers must be enclosed in <>")
        params = parse_params(";" + ptext) if ptext else {}
    if ":" not in uri:
        raise _err("URI without scheme")
    return NameAddr(display, uri, params)


@dataclass(slots=True)
class Uri:
    scheme: str
    user: str
    host: str
    port: int | None
    params: dict[str, str | None]
    headers: str

    @property
    def transport(self) -> str | None:
        t = self.params.get("transport")
        return t.lower() if t else None


def parse_uri(uri: str) -> Uri:
    """A sip/sips URI; other schemes come back with only ``scheme`` set."""
    scheme, colon, rest = uri.partition(":")
    scheme = scheme.lower()
    if not colon:
        raise _err("URI without scheme")
    if scheme not in ("sip", "sips"):
        return Uri(scheme, "", "", None, {}, "")
    at = rest.rfind("@")
    user = rest[:at] if at >= 0 else ""
    hostpart = rest[at + 1 :]
    hostpart, _, headers = hostpart.partition("?")
    hostport, _, ptext = hostpart.partition(";")
    host, port = split_hostport(hostport)
    return Uri(scheme, user, host, port, parse_params(";" + ptext) if ptext else {}, headers)


def canonical_ipv6(text: str) -> str:
    """One spelling per IPv6 address (RFC 5952), so that ``[::1]`` and ``[0:0::1]`` compare
    equal as RFC 5118 §4.3 asks; 400 for what is not an address."""
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        raise _err("Malformed IPv6 reference") from None


def split_hostport(text: str) -> tuple[str, int | None]:
    text = text.strip()
    if not text:
        raise _err("Empty host")
    if text[0] == "[":
        end = text.find("]")
        if end < 0:
            raise _err("Malformed IPv6 reference")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _err("Malformed host:port")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if " " in host or not host or not host.isascii():
        raise _err("Malformed host")
    if ":" in host:
        host = canonical_ipv6(host)
    port: int | None = None
    if port_text:
        port = parse_number(port_text, 65535, "port")
        if port == 0:
            raise _err("Malformed port")
    return host.lower(), port


@dataclass(slots=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        return f"{self.host}:{self.port or 5060}"


#: ASCII only (``re.ASCII``): a ``\d`` that matched ``١`` would read it as a port digit.
_SIMPLE_VIA = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([-\w.]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?"
    r"((?:;[-\w.!%*+`'~]+(?:=[-\w.!%*+`'~:\[\]]+)?)*)$",
    re.ASCII,
)


def parse_via(value: str) -> Via:
    """One Via value: ``SIP / 2.0 / UDP host:port;params`` with any LWS around separators."""
    m = _SIMPLE_VIA.match(value)
    if m is not None:
        transport, host, port, ptext = m.groups()
        params: dict[str, str | None] = {}
        if ptext:
            for part in ptext[1:].split(";"):
                name, eq, val = part.partition("=")
                params[name.lower()] = val if eq else None
        if host[0] == "[":
            host = canonical_ipv6(host[1:-1])
        portnum = int(port) if port else None
        if portnum is not None and not 0 < portnum < 65536:
            raise _err("Malformed port")
        return Via(transport.upper(), host.lower(), portnum, params)
    return _parse_via_slow(value)


def _parse_via_slow(value: str) -> Via:
    sent, semi, ptext = value.partition(";")
    parts = sent.split("/")
    if len(parts) != 3:
        raise _err("Malformed Via")
    if parts[0].strip().upper() != "SIP" or parts[1].strip() != "2.0":
        raise _err("Malformed Via protocol")
    tail = parts[2].split(None, 1)
    if len(tail) != 2:
        raise _err("Malformed Via sent-by")
    transport, sent_by = tail
    host, port = split_hostport(sent_by.replace(" ", ""))
    params = parse_params(";" + ptext) if semi else {}
    if semi and not params:
        raise _err("Empty Via parameter")
    return Via(transport.upper(), host, port, params)


#: Transports that carry SIP over a connection: framed by Content-Length, and a reply or
#: in-dialog request goes back on the connection it belongs to.
STREAM_TRANSPORTS = frozenset({"tcp", "tls"})


def is_stream(proto: str) -> bool:
    """Whether ``proto`` (lower case) is a stream: TCP, or TLS over TCP."""
    return proto in STREAM_TRANSPORTS


def is_sips(uri: str) -> bool:
    """Whether ``uri`` is a SIPS URI: TLS on every hop (RFC 3261 §26.2, RFC 5630)."""
    return uri[:5].lower() == "sips:"


def uri_target(uri: str, default_proto: str) -> tuple[str, str, int]:
    """(proto, host, port) a request for ``uri`` goes to (RFC 3263 without NAPTR/SRV).

    A ``sips:`` URI goes over TLS (RFC 3261 §26.2; its ``;transport=tcp`` means TLS over TCP,
    RFC 5630 §3.1.3), never over UDP or plain TCP.  TLS's default port is 5061."""
    u = parse_uri(uri)
    if u.scheme not in ("sip", "sips"):
        raise SipError(416, "Unsupported URI Scheme")
    if u.scheme == "sips":
        if u.transport not in (None, "tcp", "tls"):
            raise SipError(416, "Unsupported URI Scheme")
        proto = "tls"
    else:
        proto = u.transport or default_proto
    if proto != "udp" and not is_stream(proto):
        raise SipError(503, f"Unsupported transport {proto}")
    return proto, u.host, u.port or (5061 if proto == "tls" else 5060)
