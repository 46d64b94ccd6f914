"""RFC 3261 §17 transactions for a stateful proxy, with RFC 6026's Accepted states.

Each transaction is a small state machine.  ``SERVER_*`` and ``CLIENT_*`` below list every
state a transaction can be in; the methods say which message or timer moves it.  Timers A..M
carry their RFC letters.  Transactions never touch sockets or clocks: they send through the
``TransactionUser`` (the proxy engine) and schedule on its :class:`TimerQueue`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .dialog import Socket
from .message import SipMessage
from .timers import Timer, TimerQueue

if TYPE_CHECKING:
    from .dialog import Dialog
    from .failover import Attempt

_REPLY_HEADERS = frozenset({"via", "from", "to", "call-id", "cseq"})

T1 = 0.5
T2 = 4.0
T4 = 5.0
TIMER_C = 180.0


class TxState(enum.Enum):
    TRYING = "Trying"
    CALLING = "Calling"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class TransactionUser(Protocol):
    timers: TimerQueue
    now: float

    def send(self, socket: Socket, host: str, port: int, conn: int | None, data: bytes) -> None: ...

    def server_terminated(self, txn: ServerTransaction) -> None: ...

    def client_terminated(self, txn: ClientTransaction) -> None: ...

    def client_response(self, txn: ClientTransaction, msg: SipMessage) -> None: ...

    def client_timeout(self, txn: ClientTransaction) -> None: ...

    def client_stalled(self, txn: ClientTransaction) -> None: ...

    def count_retransmission(self) -> None: ...


class ServerTransaction:
    """A request received; absorbs retransmissions and retransmits final responses."""

    __slots__ = (
        "tu",
        "key",
        "method",
        "callid",
        "socket",
        "src_host",
        "src_port",
        "conn",
        "reliable",
        "state",
        "last_response",
        "last_status",
        "client",
        "dialog",
        "_timer_g",
        "_interval",
        "_timer_end",
        "to_tag",
        "cancelled",
        "reply_headers",
    )

    def __init__(
        self,
        tu: TransactionUser,
        key: tuple,
        request: SipMessage,
        socket: Socket,
        src: tuple[str, int],
        conn: int | None,
    ) -> None:
        self.tu = tu
        self.key = key
        self.method = request.method
        self.callid: str = request.get("call-id") or ""
        self.socket = socket
        self.src_host, self.src_port = src
        self.conn = conn
        self.reliable = socket.proto != "udp"
        self.state = TxState.PROCEEDING if self.method == "INVITE" else TxState.TRYING
        self.last_response: bytes | None = None
        self.last_status = 0
        self.client: ClientTransaction | None = None
        self.dialog: Dialog | None = None
        self._timer_g: Timer | None = None
        self._interval = T1
        self._timer_end: Timer | None = None
        self.to_tag: str | None = None
        self.cancelled = False
        #: The header lines a locally generated response copies (RFC 3261 §8.2.6.2), taken
        #: before the request is modified for forwarding.  A transaction keeps no parsed
        #: message: it lives 32 s after its final response, and tuples of strings are the
        #: only thing the cyclic garbage collector stops scanning.
        self.reply_headers = tuple(
            [(h[0], h[1]) for h in request.headers if h[0] in _REPLY_HEADERS]
        )

    def _transmit(self, data: bytes) -> None:
        self.tu.send(self.socket, self.src_host, self.src_port, self.conn, data)

    def respond(self, status: int, data: bytes) -> None:
        """Send a response from the transaction user and move the state machine on."""
        if self.state in (TxState.COMPLETED, TxState.CONFIRMED, TxState.TERMINATED):
            return
        if self.state is TxState.ACCEPTED:
            if 200 <= status < 300:  # 2xx retransmissions from the UAS pass through
                self._transmit(data)
            return
        self.last_response = data
        self.last_status = status
        self._transmit(data)
        if status < 200:
            if self.state is TxState.TRYING:
                self.state = TxState.PROCEEDING
            return
        timers = self.tu.timers
        now = self.tu.now
        if self.method == "INVITE":
            if status < 300:
                self.state = TxState.ACCEPTED  # RFC 6026 Timer L
                self._timer_end = timers.call_later(now, 64 * T1, self._terminate)
            else:
                self.state = TxState.COMPLETED
                if not self.reliable:
                    self._interval = T1
                    self._timer_g = timers.call_later(now, T1, self._on_timer_g)
                self._timer_end = timers.call_later(now, 64 * T1, self._terminate)  # Timer H
        else:
            self.state = TxState.COMPLETED
            if self.reliable:
                self._terminate()
            else:
                self._timer_end = timers.call_later(now, 64 * T1, self._terminate)  # Timer J

    def on_retransmission(self, msg: SipMessage) -> None:
        """The same request again: resend the last response, or absorb it."""
        if msg.method == "ACK":
            if self.state is TxState.COMPLETED:
                self.state = TxState.CONFIRMED
                if self._timer_g:
                    self._timer_g.cancel()
                if self._timer_end:
                    self._timer_end.cancel()
                if self.reliable:
                    self._terminate()
                else:  # Timer I
                    self._timer_end = self.tu.timers.call_later(self.tu.now, T4, self._terminate)
            return
        self.tu.count_retransmission()
        if self.state in (TxState.PROCEEDING, TxState.COMPLETED) and self.last_response:
            self._transmit(self.last_response)

    def _on_timer_g(self) -> None:
        if self.state is not TxState.COMPLETED or self.last_response is None:
            return
        self._transmit(self.last_response)
        self._interval = min(self._interval * 2, T2)
        self._timer_g = self.tu.timers.call_later(self.tu.now, self._interval, self._on_timer_g)

    def _terminate(self) -> None:
        if self.state is TxState.TERMINATED:
            return
        self.state = TxState.TERMINATED
        if self._timer_g:
            self._timer_g.cancel()
        if self._timer_end:
            self._timer_end.cancel()
        self.tu.server_terminated(self)


class ClientTransaction:
    """A request sent; retransmits it over UDP and times it out."""

    __slots__ = (
        "tu",
        "branch",
        "method",
        "request",
        "data",
        "socket",
        "host",
        "port",
        "conn",
        "reliable",
        "state",
        "server",
        "dialog",
        "handler",
        "direction",
        "cancel_pending",
        "cancelled",
        "provisional",
        "ack",
        "_timer_retx",
        "_interval",
        "_timer_end",
        "_timer_c",
        "_timer_fr",
        "attempt",
    )

    def __init__(
        self,
        tu: TransactionUser,
        branch: str,
        request: SipMessage,
        socket: Socket,
        host: str,
        port: int,
        conn: int | None,
    ) -> None:
        self.tu = tu
        self.branch = branch
        self.method = request.method or ""
        #: Kept only until the final response (for CANCEL and the ACK of a non-2xx).
        self.request: SipMessage | None = request
        self.data = b""
        self.socket = socket
        self.host = host
        self.port = port
        self.conn = conn
        self.reliable = socket.proto != "udp"
        self.state = TxState.CALLING if self.method == "INVITE" else TxState.TRYING
        self.server: ServerTransaction | None = None
        self.dialog: Dialog | None = None
        #: For requests the engine originates: called with (txn, response or None on timeout).
        self.handler: Callable[[ClientTransaction, SipMessage | None], None] | None = None
        #: 0 initial request, 1 caller to callee, 2 callee to caller (in-dialog).
        self.direction = 0
        self.cancel_pending = False
        self.cancelled = False
        self.provisional = False
        self.ack: bytes | None = None
        self._timer_retx: Timer | None = None
        self._interval = T1
        self._timer_end: Timer | None = None
        self._timer_c: Timer | None = None
        self._timer_fr: Timer | None = None
        #: The failover state of a proxied request (:mod:`engine.failover`), if any.
        self.attempt: Attempt | None = None

    def start(self, data: bytes) -> None:
        self.data = data
        self.tu.send(self.socket, self.host, self.port, self.conn, data)
        timers = self.tu.timers
        now = self.tu.now
        if not self.reliable:  # Timer A / Timer E
            self._timer_retx = timers.call_later(now, T1, self._on_retransmit)
        self._timer_end = timers.call_later(now, 64 * T1, self._on_timeout)  # Timer B / Timer F

    def _on_retransmit(self) -> None:
        if self.state not in (TxState.CALLING, TxState.TRYING, TxState.PROCEEDING):
            return
        if self.state is TxState.PROCEEDING and self.method == "INVITE":
            return
        self.tu.send(self.socket, self.host, self.port, self.conn, self.data)
        if self.method == "INVITE":
            self._interval *= 2
        elif self.state is TxState.PROCEEDING:
            self._interval = T2
        else:
            self._interval = min(self._interval * 2, T2)
        self._timer_retx = self.tu.timers.call_later(
            self.tu.now, self._interval, self._on_retransmit
        )

    def _on_timeout(self) -> None:
        if self.state in (TxState.CALLING, TxState.TRYING, TxState.PROCEEDING):
            self._stop_timers()
            self.state = TxState.TERMINATED
            self.tu.client_timeout(self)
            self.tu.client_terminated(self)

    def arm_failover(self, seconds: float) -> None:
        """With another target to try, do not wait Timer B's 32 s for one that is silent:
        after ``seconds`` without any response the user tries the next (OpenSIPS's
        ``fr_timeout``)."""
        if seconds > 0:
            self._timer_fr = self.tu.timers.call_later(self.tu.now, seconds, self._on_stalled)

    def _on_stalled(self) -> None:
        if self.state in (TxState.CALLING, TxState.TRYING):
            self.tu.client_stalled(self)

    def abandon(self) -> None:
        """Stop without a word: another target took over (no response came to cancel)."""
        if self.state is not TxState.TERMINATED:
            self._terminate()

    def _on_timer_c(self) -> None:
        """Timer C: an INVITE that rings too long is cancelled by the proxy (RFC 3261 §16.8)."""
        if self.state is TxState.PROCEEDING:
            self.tu.client_timeout(self)

    def on_response(self, msg: SipMessage) -> None:
        status = msg.status
        state = self.state
        tu = self.tu
        if status < 200:
            if state in (TxState.CALLING, TxState.TRYING, TxState.PROCEEDING):
                first = not self.provisional
                self.provisional = True
                self.state = TxState.PROCEEDING
                if self.method == "INVITE":
                    if self._timer_retx:
                        self._timer_retx.cancel()
                    if self._timer_end:
                        self._timer_end.cancel()
                    if self._timer_c:
                        self._timer_c.cancel()
                    self._timer_c = tu.timers.call_later(tu.now, TIMER_C, self._on_timer_c)
                if first or status > 100:
                    tu.client_response(self, msg)
            return
        if self.method == "INVITE":
            if status < 300:
                if state is TxState.ACCEPTED:  # 2xx retransmission: pass it on
                    tu.client_response(self, msg)
                    return
                if state in (TxState.CALLING, TxState.PROCEEDING):
                    self._stop_timers()
                    self.request = None
                    self.state = TxState.ACCEPTED  # RFC 6026 Timer M
                    self._timer_end = tu.timers.call_later(tu.now, 64 * T1, self._terminate)
                    tu.client_response(self, msg)
                return
            if state is TxState.COMPLETED:
                if self.ack:
                    tu.send(self.socket, self.host, self.port, self.conn, self.ack)
                return
            if state in (TxState.CALLING, TxState.PROCEEDING):
                self._stop_timers()
                self.state = TxState.COMPLETED
                ack = self.ack
                if self.request is not None:
                    ack = self.ack = build_ack(self.request, msg)
                    self.request = None
                if ack is not None:
                    tu.send(self.socket, self.host, self.port, self.conn, ack)
                if self.reliable:
                    self.state = TxState.TERMINATED
                    tu.client_response(self, msg)
                    tu.client_terminated(self)
                    return
                self._timer_end = tu.timers.call_later(tu.now, 32.0, self._terminate)  # Timer D
                tu.client_response(self, msg)
            return
        if state in (TxState.TRYING, TxState.PROCEEDING):
            self._stop_timers()
            self.request = None
            self.state = TxState.COMPLETED
            tu.client_response(self, msg)
            if self.reliable:
                self._terminate()
            else:
                self._timer_end = tu.timers.call_later(tu.now, T4, self._terminate)  # Timer K

    def _stop_timers(self) -> None:
        for t in (self._timer_retx, self._timer_end, self._timer_c, self._timer_fr):
            if t is not None:
                t.cancel()

    def _terminate(self) -> None:
        if self.state is TxState.TERMINATED:
            return
        self._stop_timers()
        self.request = None
        self.state = TxState.TERMINATED
        self.tu.client_terminated(self)


def build_ack(invite: SipMessage, response: SipMessage) -> bytes:
    """The hop-by-hop ACK for a non-2xx final response (RFC 3261 §17.1.1.3)."""
    lines = [f"ACK {invite.ruri} SIP/2.0"]
    for h in invite.headers:
        if h[0] == "via":
            lines.append(h[1])
            break
    for h in invite.headers:
        if h[0] in ("from", "call-id", "route", "max-forwards"):
            lines.append(h[1])
    to = response.get("to") or invite.get("to")
    lines.append(f"To: {to}")
    lines.append(f"CSeq: {invite.cseq[0]} ACK")
    lines.append("Content-Length: 0")
    lines.append("")
    lines.append("")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")
