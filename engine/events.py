"""What the engine asks its shell to do, and what it tells observers: small immutable records."""

from __future__ import annotations

from typing import NamedTuple

from .dialog import Socket


class Send(NamedTuple):
    """Send ``data`` from local ``socket`` to ``host:port``.

    ``conn`` names an existing stream connection to prefer (a response goes back on the
    connection its request came in on); the shell opens a new one when it is gone.  ``host``
    may be a domain name that the shell must resolve.
    """

    socket: Socket
    host: str
    port: int
    conn: int | None
    data: bytes


class DialogStateChanged(NamedTuple):
    """OpenSIPS's E_DLG_STATE_CHANGED, plus the end reason once the dialog is deleted."""

    id: str
    db_id: str
    callid: str
    from_tag: str
    to_tag: str
    old_state: int
    new_state: int
    end_reason: str | None
