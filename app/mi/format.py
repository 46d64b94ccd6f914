"""Hand-written JSON for dialog objects (OpenSIPS dlg_list), fast enough for 50,000 dialogs.

Building pydantic models or dicts for every dialog and handing them to ``json.dumps`` costs
several times more than writing the text directly, and a listing must not hold the event loop.
The key order, types and optional keys here are checked against ``schemas.mi.DialogOut`` by the
tests, so the model stays the source of truth for the shape.
"""

from __future__ import annotations

import json.encoder
import time
from collections.abc import Iterable
from typing import Any

from engine.dialog import Dialog

#: C-accelerated JSON string encoder that keeps non-ASCII as is (OpenSIPS prints raw UTF-8).
_enc: Any = json.encoder.encode_basestring  # type: ignore[attr-defined]


def local_date(ts: int, cache: dict[int, str]) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in the server's local time, memoised per listing."""
    text = cache.get(ts)
    if text is None:
        text = cache[ts] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    return text


def route_set_text(routes: Iterable[str]) -> str:
    """Route set as OpenSIPS prints it: comma-separated ``<uri>`` values, "" when empty."""
    return ",".join(r if r.startswith("<") else f"<{r}>" for r in routes)


def dialog_json(d: Dialog, dates: dict[int, str], ctx: bool = False) -> str:
    """One dialog object, compact, keys in OpenSIPS's order."""
    ts = d.timestart
    to = d.timeout
    out = [
        f'{{"ID":"{d.did}","db_id":"{d.db_id}","state":{int(d.state)},'
        f'"user_flags":{_enc(d.user_flags)},"timestart":{ts}'
    ]
    if ts:
        out.append(f',"datestart":"{local_date(ts, dates)}"')
    out.append(f',"timeout":{to}')
    if to:
        out.append(f',"dateout":"{local_date(to, dates)}"')
    sock = d.caller_socket
    out.append(
        f',"callid":{_enc(d.callid)},"from_uri":{_enc(d.from_uri)},"to_uri":{_enc(d.to_uri)},'
        f'"caller_tag":{_enc(d.caller_tag)},"caller_contact":{_enc(d.caller_contact)},'
        f'"callee_cseq":"{d.callee_cseq}",'
        f'"caller_route_set":{_enc(route_set_text(d.caller_route_set))},'
        f'"caller_bind_addr":{_enc(str(sock)) if sock is not None else "null"}'
    )
    if d.caller_sdp is not None:
        out.append(f',"caller_sdp":{_enc(d.caller_sdp)}')
    if d.caller_sent_sdp is not None:
        out.append(f',"caller_sent_sdp":{_enc(d.caller_sent_sdp)}')
    out.append(',"CALLEES":[')
    first = True
    for leg in d.callees:
        if not first:
            out.append(",")
        first = False
        lsock = leg.socket
        out.append(
            f'{{"callee_tag":{_enc(leg.tag)},"callee_contact":{_enc(leg.contact)},'
            f'"caller_cseq":"{leg.caller_cseq}",'
            f'"callee_route_set":{_enc(route_set_text(leg.route_set))},'
            f'"callee_bind_addr":{_enc(str(lsock)) if lsock is not None else "null"}'
        )
        if leg.sdp is not None:
            out.append(f',"callee_sdp":{_enc(leg.sdp)}')
        if leg.sent_sdp is not None:
            out.append(f',"callee_sent_sdp":{_enc(leg.sent_sdp)}')
        out.append("}")
    out.append('],"context":{}}' if ctx else "]}")
    return "".join(out)


def to_wire(text: str) -> bytes:
    """UTF-8 for the wire; a lone surrogate (undecodable SIP byte) becomes a JSON ``\\uXXXX``."""
    return text.encode("utf-8", "backslashreplace")
