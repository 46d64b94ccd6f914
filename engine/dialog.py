"""A dialog and its state machine, as OpenSIPS's dialog module models them.

Every transition of the machine is in ``TRANSITIONS`` below, so the whole life of a dialog can be
read at a glance (h11's ``_state.py`` style).  The table is pure data; ``Dialog.apply`` is the
only place that changes ``state``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final


class DlgState(enum.IntEnum):
    """OpenSIPS dialog states (``$DLG_status``)."""

    UNCONFIRMED = 1
    EARLY = 2
    CONFIRMED_NA = 3
    CONFIRMED = 4
    DELETED = 5


class DlgEvent(enum.Enum):
    """What can happen to a dialog."""

    PROVISIONAL = "1xx with To-tag"
    ANSWERED = "2xx"
    FAILED = "negative final reply"
    ACK = "ACK for 2xx"
    TERMINATE = "BYE, timeout, MI or CANCEL"


S, E = DlgState, DlgEvent

#: (state, event) -> new state.  A pair missing from the table leaves the state unchanged.
TRANSITIONS: dict[tuple[DlgState, DlgEvent], DlgState] = {
    (S.UNCONFIRMED, E.PROVISIONAL): S.EARLY,
    (S.UNCONFIRMED, E.ANSWERED): S.CONFIRMED_NA,
    (S.UNCONFIRMED, E.FAILED): S.DELETED,
    (S.UNCONFIRMED, E.TERMINATE): S.DELETED,
    (S.EARLY, E.ANSWERED): S.CONFIRMED_NA,
    (S.EARLY, E.FAILED): S.DELETED,
    (S.EARLY, E.TERMINATE): S.DELETED,
    (S.CONFIRMED_NA, E.ACK): S.CONFIRMED,
    (S.CONFIRMED_NA, E.TERMINATE): S.DELETED,
    (S.CONFIRMED, E.TERMINATE): S.DELETED,
}

#: The answered states: a call is up (lifetime, pings, ``active_dialogs``, what is stored).
ANSWERED: frozenset[DlgState] = frozenset({S.CONFIRMED_NA, S.CONFIRMED})

#: Pairs that leave the state as it is and are normal (a 1xx after the first or after the
#: 2xx, the ACK of a re-INVITE).  Any other pair missing from ``TRANSITIONS`` is counted as
#: unexpected (``Stats.unexpected_transitions``).
IGNORED: frozenset[tuple[DlgState, DlgEvent]] = frozenset(
    {
        (S.EARLY, E.PROVISIONAL),
        (S.CONFIRMED_NA, E.PROVISIONAL),
        (S.CONFIRMED, E.PROVISIONAL),
        (S.CONFIRMED, E.ACK),
    }
)


class EndReason:
    """``$DLG_end_reason`` texts (OpenSIPS dialog module)."""

    UPSTREAM_BYE: Final = "Upstream BYE"
    DOWNSTREAM_BYE: Final = "Downstream BYE"
    LIFETIME_TIMEOUT: Final = "Lifetime Timeout"
    MI_TERMINATION: Final = "MI Termination"
    CALLER_PING_TIMEOUT: Final = "Caller Ping Timeout"
    CALLEE_PING_TIMEOUT: Final = "Callee Ping Timeout"
    CANCELLED: Final = "Cancelled"
    SIP_RACE_CONDITION: Final = "SIP Race Condition"
    FAILED: Final = "Failed"


def reverse_hex(value: int) -> str:
    """OpenSIPS's reversed hex: lowercase hex digits, least significant nibble first."""
    if value == 0:
        return "0"
    digits = []
    while value:
        digits.append("0123456789abcdef"[value & 0xF])
        value >>= 4
    return "".join(digits)


def parse_reverse_hex(text: str) -> int | None:
    """Inverse of :func:`reverse_hex`; ``None`` when ``text`` is not 1-8 hex digits."""
    if not 0 < len(text) <= 8 or not text.isascii():  # int(x, 16) also reads "١"
        return None
    try:
        return int(text[::-1], 16)
    except ValueError:
        return None


def bracket(host: str) -> str:
    """A host as URIs and Via write it: IPv6 addresses in brackets (RFC 3261 §25.1)."""
    return f"[{host}]" if ":" in host else host


@dataclass(slots=True, eq=False)
class Socket:
    """A local listening socket, printed in OpenSIPS ``proto:ip:port`` form.

    ``advertised_host``/``advertised_port`` are what peers must use to reach it (OpenSIPS's
    ``socket=udp:10.0.0.5:5060 as 203.0.113.5:5060``): behind NAT, in a container or on a
    wildcard address the bound address is not one a phone can send to.  ``hostport`` is
    what goes into Via, Record-Route and Contact.
    """

    proto: str
    host: str
    port: int
    advertised_host: str = ""
    advertised_port: int = 0
    hostport: str = ""

    def __post_init__(self) -> None:
        host = self.advertised_host or self.host
        self.hostport = f"{bracket(host)}:{self.advertised_port or self.port}"

    @property
    def family(self) -> int:
        return 6 if ":" in self.host else 4

    def __str__(self) -> str:
        return f"{self.proto}:{bracket(self.host)}:{self.port}"


@dataclass(slots=True, eq=False)
class CalleeLeg:
    """One callee branch: every reply that carries a To-tag creates a leg."""

    tag: str
    contact: str = ""
    #: Highest CSeq the caller sent toward this callee (a BYE to the callee uses this + 1).
    caller_cseq: int = 0
    #: Route set toward the callee, name-addrs (``<sip:proxy;lr>``) in the order to use them.
    route_set: tuple[str, ...] = ()
    socket: Socket | None = None
    sdp: str | None = None
    sent_sdp: str | None = None


@dataclass(slots=True, eq=False)
class Dialog:
    """One dialog: the caller leg is inline, callee legs are in ``callees``."""

    h_entry: int
    h_id: int
    callid: str
    from_uri: str
    to_uri: str
    caller_tag: str
    caller_contact: str
    caller_socket: Socket
    #: Caller's INVITE CSeq; copied into each callee leg's ``caller_cseq``.
    invite_cseq: int
    #: Route set toward the caller: the INVITE's Record-Route values in order, each a
    #: name-addr as received (``<sip:proxy;lr>``); dlg_list joins them with ``,``.
    caller_route_set: tuple[str, ...] = ()
    #: Highest CSeq the callee has sent toward the caller (a BYE to the caller uses this + 1).
    callee_cseq: int = 0
    caller_sdp: str | None = None
    caller_sent_sdp: str | None = None
    #: Where the caller's requests came from: (proto, host, port), used to reach it when its
    #: contact is not routable as is (kept for BYEs built by the engine).
    caller_source: tuple[str, str, int] | None = None
    #: The stream connection the caller's INVITE came on, reused to reach it over TCP.
    caller_conn: int | None = None
    callees: list[CalleeLeg] = field(default_factory=list)
    #: Index in ``callees`` of the leg that answered with 2xx, or -1.
    confirmed_leg: int = -1
    state: DlgState = DlgState.UNCONFIRMED
    user_flags: str = ""
    timestart: int = 0
    #: Absolute expiry (Unix seconds); 0 while no lifetime timer runs.
    timeout: int = 0
    #: Lifetime in seconds, armed at confirmation.
    lifetime: int = 0
    end_reason: str | None = None
    #: Highest CSeq each party has seen from this proxy, once it generated a request of its
    #: own there (a ping): relayed requests are then renumbered above it (dlg_handlers).
    local_cseq_caller: int = 0
    local_cseq_callee: int = 0
    #: What is added to a party's CSeq numbers on their way to the other party since then
    #: (recomputed from ``local_cseq_*`` after a restart).
    cseq_shift_caller: int = 0
    cseq_shift_callee: int = 0
    #: Branch of the INVITE client transaction toward the callee (for CANCEL while early).
    invite_branch: str = ""
    #: Outstanding engine-generated BYEs before the dialog is gone.
    pending_byes: int = 0
    #: Monotonic time at which the dialog was created; for ended-call records.
    created: float = 0.0
    ended: float = 0.0
    #: The running lifetime timer (engine.timers.Timer), if any.
    timer: object | None = None
    #: A CANCEL and the 2xx crossed (OpenSIPS's race condition): the caller may never ACK or
    #: BYE a call it believes cancelled, so the lifetime is cut short and its end is reported
    #: as "SIP Race Condition".
    race_condition: bool = False

    @property
    def did(self) -> str:
        """The ``ID`` of dlg_list: reversed-hex ``h_entry.h_id``."""
        return f"{reverse_hex(self.h_entry)}.{reverse_hex(self.h_id)}"

    @property
    def db_id(self) -> int:
        return (self.h_entry << 32) + self.h_id

    @property
    def callee(self) -> CalleeLeg | None:
        """The leg that answered (2xx), else the latest early leg."""
        if self.confirmed_leg >= 0:
            return self.callees[self.confirmed_leg]
        return self.callees[-1] if self.callees else None

    def leg_with_tag(self, tag: str) -> CalleeLeg | None:
        """The callee leg with To-tag ``tag``, if there is one."""
        for leg in self.callees:
            if leg.tag == tag:
                return leg
        return None

    def leg_for_tag(self, tag: str) -> CalleeLeg:
        """The callee leg with To-tag ``tag``, created if new."""
        leg = self.leg_with_tag(tag)
        if leg is not None:
            return leg
        leg = CalleeLeg(tag=tag, caller_cseq=self.invite_cseq)
        self.callees.append(leg)
        return leg

    def apply(self, event: DlgEvent) -> DlgState | None:
        """Move along ``TRANSITIONS``; return the old state if the state changed, else None."""
        new = TRANSITIONS.get((self.state, event))
        if new is None or new is self.state:
            return None
        old = self.state
        self.state = new
        return old

    def set_end_reason(self, reason: str) -> None:
        """The first reason set wins (OpenSIPS ``init_dlg_term_reason``)."""
        if self.end_reason is None:
            self.end_reason = reason
