"""What the engine hands its shell after each call: small immutable records (effects).

The shell drains them after every entry point (``Engine.receive``, ``handle_timers`` and the
commands), as aioquic's ``datagrams_to_send()``/``next_event()``: :class:`Send` from
``Engine.take_sends``, the rest from ``Engine.take_events``: what happened to dialogs, and to
sources of requests (the rate limit of :mod:`engine.pike`).  Nothing inside the engine calls
back into the shell.
"""

from __future__ import annotations

from typing import NamedTuple

from .dialog import Dialog, DlgState, Socket
from .locator import Query


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


class StateChanged(NamedTuple):
    """A dialog moved from ``old`` to ``new`` (a new dialog: 1 to 1)."""

    dialog: Dialog
    old: DlgState
    new: DlgState

    def public(self) -> DialogStateChanged:
        """As OpenSIPS's E_DLG_STATE_CHANGED reports it."""
        dlg = self.dialog
        callee = dlg.callee
        return DialogStateChanged(
            dlg.did,
            str(dlg.db_id),
            dlg.callid,
            dlg.caller_tag,
            callee.tag if callee else "",
            int(self.old),
            int(self.new),
            dlg.end_reason if self.new is DlgState.DELETED else None,
        )


class DialogChanged(NamedTuple):
    """A dialog changed in a way worth storing (only with ``EngineConfig.report_changes``);
    ``state_only``: its state is all that changed (the ACK's 3 to 4), one column to update."""

    dialog: Dialog
    state_only: bool


class DialogEnded(NamedTuple):
    """A dialog reached state 5 (ended-call records)."""

    dialog: Dialog


class SourceBlocked(NamedTuple):
    """A source IP went over the request rate limit (engine.pike): its initial requests are
    dropped from now on (OpenSIPS pike's "PIKE - BLOCKing ip")."""

    source: str
    requests: int
    window: float


class SourceReleased(NamedTuple):
    """A blocked source IP calmed down (or was forgotten): no longer limited."""

    source: str


class Resolve(NamedTuple):
    """The shell must resolve ``query`` (RFC 3263) and answer with ``Engine.resolved``;
    requests for it wait in the engine meanwhile."""

    query: Query


class DestinationChanged(NamedTuple):
    """A next hop went down (``Probing``: it refused, timed out or answered 503) or came
    back (``Active``); ``reason`` says why it went down.  Logged once per change."""

    uri: str
    state: str
    reason: str


Event = (
    StateChanged
    | DialogChanged
    | DialogEnded
    | Resolve
    | DestinationChanged
    | SourceBlocked
    | SourceReleased
)
