"""The proxy core (RFC 3261 §16): one ``Engine`` fed bytes and timer ticks, emitting ``Send``s.

Sans-I/O in the way of h11 and aioquic: ``receive`` takes a message with its local socket,
source address and the current monotonic time, and so do ``handle_timers`` and the commands
(``end_dialog``, ``set_timeout``); after each call the shell drains what happened:
``take_sends()`` (what to write) and ``take_events()`` (state changes, changes to store, ended
dialogs; :mod:`engine.events`).  ``next_deadline`` says when to call ``handle_timers``.  The
dialog logic lives in :mod:`engine.dlg_handlers`, requests the engine originates inside a
dialog (BYE, CANCEL) in :mod:`engine.dlg_req_within`.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import dlg_handlers, dlg_life, dlg_req_within, dlg_timer, failover, probing
from .address import is_sips, parse_number, parse_uri, split_values
from .dialog import Dialog, DlgState, EndReason, Socket
from .dispatcher import Destination, DestinationSet, DsState
from .dlg_table import DialogTable
from .events import DialogChanged, DialogEnded, Event, Resolve, Send, StateChanged
from .locator import TRANSPORTS, Locator, Query, Target, locate
from .message import ENCODING, ERRORS, SipError, SipMessage, header_key, parse, validate_request
from .pike import PikeConfig, pike_for
from .relay import RelayPolicy
from .stats import Stats
from .timers import TimerQueue
from .transaction import ClientTransaction, ServerTransaction, TxState

VERSION = "0.1.0"

#: Requests that create a dialog and so get our Record-Route.
RECORD_ROUTED = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY", "UPDATE", "PRACK", "INFO"})
#: Option tags this proxy understands in Proxy-Require (none: it implements no extension).
SUPPORTED_PROXY_OPTIONS: frozenset[str] = frozenset()
ROUTABLE_SCHEMES = frozenset({"sip", "sips", "tel"})
#: Headers a locally generated response copies from its request (RFC 3261 §8.2.6.2).
REPLY_HEADERS = frozenset({"via", "from", "to", "call-id", "cseq"})
#: The largest UDP payload per address family (65535 less the IPv4 and UDP headers; IPv6's
#: length field excludes its own header).  A request that outgrows it once our Via and
#: Record-Route are in gets a 513 (docs/operations.md), not a sendto() that fails unseen.
MAX_DATAGRAM = {4: 65507, 6: 65527}


@dataclass(slots=True)
class EngineConfig:
    #: Where initial requests go (OpenSIPS's dispatcher set); empty: by Request-URI.
    next_hops: list[Destination] = field(default_factory=list)
    #: Without next hops, the networks and domains a Request-URI may send a request to (an
    #: address taken from a message is otherwise never used: no open relay).
    relay_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    #: Seconds without any response before a silent target is skipped for the next.
    fr_timeout: float = 5.0
    #: Seconds between OPTIONS probes of the next hops (0: only calls find them up again).
    probe_interval: float = 0.0
    #: Further addresses that are this host (what a wildcard socket receives on).
    local_hosts: tuple[str, ...] = ()
    default_timeout: int = 43200
    hash_size: int = 4096
    max_message_size: int = 65536
    delete_delay: int = 0
    #: The Server header of the replies the engine makes, and the User-Agent of the requests
    #: it sends (OpenSIPS ``server_header``/``user_agent_header``); "" for none.  No version:
    #: it would tell a scanner which bugs to try.
    server_header: str = "sipdlg"
    user_agent_header: str = "sipdlg"
    #: Extra header lines added to every BYE the engine sends (OpenSIPS ``dlg_extra_hdrs``).
    bye_extra_headers: str = ""
    #: OpenSIPS flag B: BYE both legs when the lifetime runs out (else the dialog just expires).
    bye_on_timeout: bool = True
    #: In-dialog OPTIONS pings (flags P/p): "none", "caller", "callee" or "both".
    ping: str = "none"
    ping_interval: float = 30.0
    #: "options" (OpenSIPS flags P/p) or "reinvite" (flags R/r: a re-INVITE with the party's
    #: current SDP, for user agents that do not answer OPTIONS).
    ping_method: str = "options"
    #: Emit ``DialogChanged`` for what a store must write (the shell has a store).
    report_changes: bool = False
    #: No final answer to a ping within this many seconds ends the dialog.
    ping_timeout: float = 5.0
    #: Lifetime left to a call whose CANCEL crossed its 2xx (OpenSIPS ``race_condition_timeout``).
    race_condition_timeout: int = 5
    #: The per-source request rate limit (engine/pike.py); None: off.
    pike: PikeConfig | None = None


class Engine:
    """A dialog-stateful, record-routing proxy with no I/O of its own."""

    def __init__(
        self,
        sockets: list[Socket],
        config: EngineConfig | None = None,
        *,
        wall_offset: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if not sockets:
            raise ValueError("at least one listening socket is needed")
        self.sockets = sockets
        self.config = config or EngineConfig()
        self.rng = rng or random.Random()
        self.timers = TimerQueue()
        self.now = 0.0
        #: Add to monotonic ``now`` to get Unix time (timestart, timeout).
        self.wall_offset = wall_offset
        self.dialogs = DialogTable(self.config.hash_size, self.rng)
        self.stats = Stats()
        self.server_txns: dict[tuple, ServerTransaction] = {}
        self.client_txns: dict[tuple[str, str], ClientTransaction] = {}
        self._sends: list[Send] = []
        self._events: list[Event] = []
        self._accepting = True
        self._shedding: int | None = None
        self._shed_share = 1.0
        self._shed_credit = 0.0
        self._report_states = True
        self._local_hosts = {s.host for s in sockets} | set(self.config.local_hosts)
        self._local_hosts |= {s.advertised_host for s in sockets if s.advertised_host}
        self._local_ports = {s.port for s in sockets} | {
            s.advertised_port for s in sockets if s.advertised_port
        }
        self._local_cache: dict[str, bool] = {}
        #: Read-only outside the engine (MI ``pike_list``, metrics).
        self.pike = pike_for(
            self.config.pike, self._local_hosts, [d.host for d in self.config.next_hops]
        )
        self._branch_prefix = f"z9hG4bK{self.rng.getrandbits(32):x}."
        self._branch_seq = 0
        self._tag = f"{self.rng.getrandbits(32):x}"
        self.locator = Locator()
        hops = self.config.next_hops
        self.relay = RelayPolicy(self.config.relay_allow, tuple(d.host for d in hops))
        self.dispatcher = DestinationSet(hops, self.rng) if hops else None
        if self.dispatcher is not None and self.config.probe_interval > 0:
            probing.start(self, self.config.probe_interval)

    # -- shell interface ------------------------------------------------------------------------

    def held(self) -> int:
        """Dialogs, transactions and timers held: what the shell's garbage-collector
        watchdog measures Python's memory against (app/gc_policy.py)."""
        return len(self.dialogs) + len(self.server_txns) + len(self.client_txns) + len(self.timers)

    def wall(self) -> float:
        return self.now + self.wall_offset

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def handle_timers(self, now: float) -> None:
        self.now = now
        self.timers.run_due(now)

    def take_sends(self) -> list[Send]:
        """What must go out since the last call, in order (read it, do not keep it)."""
        sends = self._sends
        if sends:
            self._sends = []
        return sends

    def take_events(self) -> list[Event]:
        """What happened to dialogs since the last call, in order (read it, do not keep it)."""
        events = self._events
        if events:
            self._events = []
        return events

    def report_states(self, on: bool) -> None:
        """Whether to report every state change (``StateChanged``): only while somebody
        listens (the event stream's consumers), since nothing else needs them."""
        self._report_states = on

    def end_dialog(self, dlg: Dialog, reason: str, extra_headers: str, now: float) -> bool:
        """End a dialog as OpenSIPS's dlg_end_dlg does: BYE both legs, or CANCEL if early."""
        self.now = now
        return dlg_req_within.end_dialog(self, dlg, reason, extra_headers)

    def set_timeout(self, dlg: Dialog, seconds: int, now: float) -> bool:
        """Re-arm a live dialog's lifetime (MI ``dlg_set_timeout``); False if it ended."""
        self.now = now
        return dlg_timer.set_lifetime(self, dlg, seconds)

    def resolved(self, query: Query, targets: Sequence[Target], ttl: float, now: float) -> None:
        """The shell's answer to a ``Resolve``: the targets in the order to try them (empty:
        the name does not resolve), cached for ``ttl`` seconds; waiting requests go on."""
        self.now = now
        for resume in self.locator.store(query, tuple(targets), ttl, now):
            resume()

    def transport_error(self, proto: str, host: str, port: int, reason: str, now: float) -> None:
        """Nothing can be sent to ``proto:host:port`` (ICMP unreachable, a refused or failed
        TCP/TLS connection): what waits for its first answer from there goes to the next
        target, or fails at once with a 503, instead of timing out."""
        self.now = now
        stuck = [
            ctx
            for ctx in self.client_txns.values()
            if ctx.port == port
            and ctx.host == host
            and ctx.socket.proto == proto
            and ctx.state in (TxState.CALLING, TxState.TRYING)
        ]
        for ctx in stuck:
            attempt = ctx.attempt
            retried = failover.retry(self, ctx, reason)
            ctx.abandon()
            if retried:
                continue
            if ctx.handler is not None:
                ctx.handler(ctx, None)
            elif attempt is not None:
                failover.give_up(self, attempt)

    def set_destination_state(self, address: str, state: str, now: float) -> bool:
        """MI ``ds_set_state``: a next hop by URI or ``host[:port]``; False if none."""
        self.now = now
        dest = self.dispatcher.find(address) if self.dispatcher is not None else None
        if dest is None:
            return False
        failover.set_state(self, dest, state, "" if state == DsState.ACTIVE else "MI", by_mi=True)
        return True

    def stream_opened(self) -> None:
        """The shell accepted or opened a stream connection (OpenSIPS's ``tcp_connections``)."""
        self.stats.tcp_connections += 1

    def stream_error(
        self,
        head: bytes,
        error: SipError,
        socket: Socket,
        src: tuple[str, int],
        conn: int | None,
        now: float,
    ) -> None:
        """A stream the shell frames (TCP) broke the framing rules (``error`` from
        :class:`engine.framing.StreamFramer`) and is about to be closed: counted with the
        messages that failed to parse, and a request answered (400, 513) from the header
        lines of ``head`` that can be read, so the sender learns why."""
        self.now = now
        self.stats.parse_errors += 1
        if error.status and head and not head.startswith((b"SIP/", b"ACK ")):
            self._reply_to_garbage(head, error, socket, src, conn)

    def set_overload(self, retry_after: int | None, now: float, share: float = 1.0) -> None:
        """The shell's overload verdict (RFC 7339's problem, RFC 6357's advice: reject early,
        keep what is established).  While ``retry_after`` is set, that ``share`` of new
        INVITEs (evenly spread; the first one is always among them) gets ``503 Service
        Unavailable`` with ``Retry-After``, statelessly: no transaction, no dialog, nothing
        forwarded.  Responses, ACKs, CANCELs and every in-dialog request are served."""
        self.now = now
        if retry_after is not None and self._shedding is None:
            self._shed_credit = 1.0
        self._shedding = retry_after
        self._shed_share = share

    def stop_accepting(self) -> None:
        """From now on new INVITEs get 503 (a graceful shutdown)."""
        self._accepting = False

    def send(self, socket: Socket, host: str, port: int, conn: int | None, data: bytes) -> None:
        self._sends.append(Send(socket, host, port, conn, data))
        if data[:4] == b"SIP/":  # count what goes out: replies by class, requests by method
            self.stats.sent_replies_by_class[data[8:9]] += 1
        else:
            self.stats.sent_requests_by_method[data[: data.find(b" ")]] += 1

    def receive(
        self, data: bytes, socket: Socket, src: tuple[str, int], conn: int | None, now: float
    ) -> str:
        """Process one datagram or one framed stream message; returns its Call-ID ("" if it
        has none), which the shell's realtime store orders messages by."""
        self.now = now
        try:
            if len(data) > self.config.max_message_size:  # refused before any parsing work
                raise SipError(513, "Message Too Large")
            msg = parse(data, stream=conn is not None)
        except SipError as exc:
            self.stats.parse_errors += 1
            if exc.status and not data.startswith(b"SIP/") and not data.startswith(b"ACK "):
                self._reply_to_garbage(data, exc, socket, src, conn)
            return ""
        if msg.method is None:
            self._on_response(msg)
        else:
            self._on_request(msg, socket, src, conn)
        return msg.get("call-id") or ""

    def mark_dirty(self, dlg: Dialog) -> None:
        """Note that ``dlg`` changed in a way worth storing (engine/dlg_db.py, app/store/)."""
        if self.config.report_changes:
            self._events.append(DialogChanged(dlg, False))

    def mark_state(self, dlg: Dialog) -> None:
        """Like :meth:`mark_dirty` when only the state changed (the ACK's 3 to 4): the store
        can update one column instead of writing the whole row again."""
        if self.config.report_changes:
            self._events.append(DialogChanged(dlg, True))

    def notify(self, dlg: Dialog, old: DlgState) -> None:
        if self._report_states:
            self._events.append(StateChanged(dlg, old, dlg.state))

    def dialog_ended(self, dlg: Dialog) -> None:
        self._events.append(DialogEnded(dlg))

    def queue_event(self, event: Event) -> None:
        self._events.append(event)

    def resolve(self, query: Query) -> None:
        """Ask the shell to resolve ``query`` (requests wait in :attr:`locator`)."""
        self._events.append(Resolve(query))

    # -- helpers ------------------------------------------------------------------------------

    def new_branch(self) -> str:
        self._branch_seq += 1
        return f"{self._branch_prefix}{self._branch_seq:x}"

    def local_tag(self, callid: str) -> str:
        return f"{self._tag}.{zlib.crc32(callid.encode(ENCODING, ERRORS)):x}"

    def is_local_uri(self, uri: str) -> bool:
        # Parameters (our Record-Route's per-dialog ``did``) do not change whether a URI is
        # ours: cache on what precedes them, or every dialog would miss the cache.
        semi = uri.find(";", uri.rfind("@") + 1)
        if semi > 0:
            uri = uri[:semi]
        hit = self._local_cache.get(uri)
        if hit is None:
            try:
                u = parse_uri(uri)
                hit = (
                    u.scheme in ("sip", "sips")
                    and u.host in self._local_hosts
                    and (u.port or 5060) in self._local_ports
                )
            except SipError:
                hit = False
            if len(self._local_cache) > 10000:
                self._local_cache.clear()
            self._local_cache[uri] = hit
        return hit

    def socket_for(self, proto: str, preferred: Socket | None = None, host: str = "") -> Socket:
        """The socket to send to ``host`` over ``proto``: the preferred one (where the
        request came in) when it fits, else the first of that transport and address family."""
        family = 6 if ":" in host else 4
        if preferred is not None and preferred.proto == proto and preferred.family == family:
            return preferred
        for s in self.sockets:
            if s.proto == proto and s.family == family:
                return s
        for s in self.sockets:
            if s.proto == proto and not host:
                return s
        raise SipError(503, f"No {proto.upper()} IPv{family} socket")

    def record_route(self, socket: Socket, did: str, sips: bool = False) -> str:
        """Our Record-Route entry for ``socket``: a sips URI on a TLS socket when the request
        is for a sips URI (RFC 3261 §16.6 step 4), else sip naming any transport but UDP."""
        if sips and socket.proto == "tls":
            return f"<sips:{socket.hostport};lr;did={did}>"
        transport = "" if socket.proto == "udp" else f";transport={socket.proto}"
        return f"<sip:{socket.hostport}{transport};lr;did={did}>"

    # -- responses built here -----------------------------------------------------------------

    def build_reply(
        self,
        lines: Sequence[tuple[str, str]],
        status: int,
        reason: str,
        to_tag: str | None,
        extra: str = "",
    ) -> bytes:
        """A response copying the request's (key, raw line) pairs, with our To-tag if needed."""
        out = [f"SIP/2.0 {status} {reason}"]
        for key, raw in lines:
            if to_tag and key == "to" and ";tag=" not in raw.lower():
                raw = f"{raw};tag={to_tag}"
            out.append(raw)
        server = self.config.server_header
        if server:
            out.append(f"Server: {server}")
        if extra:
            out.append(extra)
        out.append("Content-Length: 0\r\n\r\n")
        return "\r\n".join(out).encode(ENCODING, ERRORS)

    def reply(self, stx: ServerTransaction, status: int, reason: str, extra: str = "") -> None:
        tag = None
        if status > 100:
            tag = stx.to_tag or self.local_tag(stx.callid)
        stx.respond(status, self.build_reply(stx.reply_headers, status, reason, tag, extra))

    def _reply_stateless(
        self,
        msg: SipMessage,
        status: int,
        reason: str,
        socket: Socket,
        src: tuple[str, int],
        conn: int | None,
        extra: str = "",
    ) -> None:
        lines = [(h[0], h[1]) for h in msg.headers if h[0] in REPLY_HEADERS]
        if not any(key == "via" for key, _ in lines):
            return
        tag = self.local_tag(msg.get("call-id") or "") if status > 100 else None
        self.stats.err_requests += 1
        self.send(socket, src[0], src[1], conn, self.build_reply(lines, status, reason, tag, extra))

    def _reply_to_garbage(
        self, data: bytes, exc: SipError, socket: Socket, src: tuple[str, int], conn: int | None
    ) -> None:
        """Answer a request that failed to parse, from whatever header lines can be read."""
        end = data.find(b"\r\n\r\n")
        head = data[: end if end >= 0 else len(data)].decode(ENCODING, ERRORS)
        lines: list[tuple[str, str]] = []
        kept = False
        for line in head.split("\r\n")[1:]:
            if line[:1] in (" ", "\t"):
                if kept:
                    key, raw = lines[-1]
                    lines[-1] = (key, f"{raw} {line.strip()}")
                continue
            name, colon, _ = line.partition(":")
            key = header_key(name)
            kept = bool(colon) and key in REPLY_HEADERS
            if kept:
                lines.append((key, line))
        if not any(key == "via" for key, _ in lines):
            return
        callid = next((raw for key, raw in lines if key == "call-id"), "")
        self.stats.err_requests += 1
        reply = self.build_reply(lines, exc.status, exc.reason, self.local_tag(callid))
        self.send(socket, src[0], src[1], conn, reply)

    # -- requests -----------------------------------------------------------------------------

    def _on_request(
        self, msg: SipMessage, socket: Socket, src: tuple[str, int], conn: int | None
    ) -> None:
        stats = self.stats
        stats.rcv_requests += 1
        method = msg.method
        assert method is not None
        stats.requests_by_method[method] += 1
        pike = self.pike
        if pike is not None and pike.drops(msg, src[0], self.now, self._events, self.dialogs):
            stats.drop_requests += 1  # a flooding source gets nothing back
            return
        try:
            validate_request(msg)
        except SipError as exc:
            stats.parse_errors += 1
            if method != "ACK" and exc.status:
                self._reply_stateless(msg, exc.status, exc.reason, socket, src, conn)
            return
        via = msg.via
        branch = via.branch
        key_method = "INVITE" if method == "ACK" else method
        if branch and branch.startswith("z9hG4bK"):
            key: tuple = (branch, via.host, via.port, key_method)
        else:  # RFC 2543 matching
            key = (msg.callid, msg.cseq[0], msg.from_.tag, via.host, via.port, key_method)

        stx = self.server_txns.get(key)
        if stx is not None:
            if method == "ACK" and stx.state is not TxState.COMPLETED:
                pass  # an ACK for a 2xx: end to end, handled below
            else:
                stx.on_retransmission(msg)
                return

        if self._shedding is not None and method == "INVITE" and not msg.to.tag and self._shed():
            stats.shed_invites += 1
            retry = f"Retry-After: {self._shedding}"
            self._reply_stateless(msg, 503, "Service Unavailable", socket, src, conn, retry)
            return

        if method == "CANCEL":
            self._on_cancel(msg, key, socket, src, conn)
            return

        if method != "ACK":
            mf = msg.get("max-forwards")
            if mf is not None and int(mf) == 0:
                self._reply_stateless(msg, 483, "Too Many Hops", socket, src, conn)
                return
            required = msg.get_all("proxy-require")
            unsupported = [o for o in required if o.lower() not in SUPPORTED_PROXY_OPTIONS]
            if unsupported:
                self._reply_stateless(
                    msg,
                    420,
                    "Bad Extension",
                    socket,
                    src,
                    conn,
                    f"Unsupported: {', '.join(unsupported)}",
                )
                return
        scheme = msg.ruri.partition(":")[0].lower()
        if scheme not in ROUTABLE_SCHEMES:
            if method != "ACK":
                self._reply_stateless(msg, 416, "Unsupported URI Scheme", socket, src, conn)
            return

        self._fix_via(msg, src)
        stx = None
        if method != "ACK":
            stx = ServerTransaction(self, key, msg, socket, src, conn)
            self.server_txns[key] = stx
            if method == "INVITE":
                self.reply(stx, 100, "Trying")
        try:
            self._route(msg, stx, socket, src, conn)
        except SipError as exc:
            if stx is not None:
                self.reply(stx, exc.status or 500, exc.reason)

    def _shed(self) -> bool:
        """Whether this new INVITE is one of the share turned away."""
        self._shed_credit += self._shed_share
        if self._shed_credit >= 1.0:
            self._shed_credit -= 1.0
            return True
        return False

    def _fix_via(self, msg: SipMessage, src: tuple[str, int]) -> None:
        """RFC 3261 §18.2.1 ``received`` and RFC 3581 ``rport`` on the top Via."""
        via = msg.via
        add = ""
        if via.host != src[0]:
            add = f";received={src[0]}"
        if "rport" in via.params and via.params["rport"] is None:
            add += f";rport={src[1]}"
        if not add:
            return
        for h in msg.headers:
            if h[0] == "via":
                values = split_values(h[2])
                if "rport" in via.params and via.params["rport"] is None:
                    first = values[0].replace(";rport", "", 1)
                else:
                    first = values[0]
                values[0] = first + add
                name = h[1].split(":", 1)[0].rstrip()
                h[2] = ", ".join(values)
                h[1] = f"{name}: {h[2]}"
                break

    def _route(
        self,
        msg: SipMessage,
        stx: ServerTransaction | None,
        socket: Socket,
        src: tuple[str, int],
        conn: int | None,
    ) -> None:
        method = msg.method
        # Loose routing (RFC 3261 §16.4): pop every Route entry that is us.
        own_route = None
        while True:
            routes = msg.get("route")
            if routes is None:
                break
            values = split_values(routes)
            if not values:
                raise SipError(400, "Empty Route header")
            first = values[0]
            uri = first[first.find("<") + 1 : first.rfind(">")] if "<" in first else first
            if not self.is_local_uri(uri):
                break
            own_route = uri
            msg.pop_first_value("route")

        to_tag = msg.to.tag
        if to_tag:
            dlg_handlers.route_in_dialog(self, msg, stx, socket, src, conn, own_route)
            return
        if method == "ACK":
            return  # an ACK without To-tag and no transaction: nothing to do
        if not self._accepting and method == "INVITE":
            raise SipError(503, "Service Unavailable")
        hops: list[tuple[Destination | None, failover.Where]]
        if self.dispatcher is not None:
            order = self.dispatcher.order()
            if is_sips(msg.ruri):  # TLS on every hop, never downgraded (RFC 5630 §3.1.1)
                hops = [(d, d.where("tls")) for d in order if d.proto in (None, "tls")]
                if order and not hops:
                    raise SipError(416, "Unsupported URI Scheme")
            else:
                hops = [(d, d.where(socket.proto)) for d in order]
            if not hops:
                raise SipError(503, "No Destination Available")
        else:
            if self.is_local_uri(msg.ruri):
                raise SipError(404, "Not Found")
            where = locate(msg.ruri, socket.proto)
            if not self.relay.allows(where):
                raise SipError(403, "Relay Forbidden")
            hops = [(None, where)]
        dlg = None
        if method == "INVITE":
            dlg = dlg_handlers.create_dialog(self, msg, socket, src, conn)
            if stx is not None:
                stx.dialog = dlg
        attempt = failover.Attempt(msg, stx, socket, dlg, 0, None, method in RECORD_ROUTED, hops)
        failover.advance(self, attempt)

    def forward(
        self,
        msg: SipMessage,
        stx: ServerTransaction | None,
        out: Socket,
        host: str,
        port: int,
        conn: int | None,
        dlg: Dialog | None,
        direction: int = 0,
    ) -> ClientTransaction | None:
        """Send a request on: Max-Forwards, our Via, then a client transaction (not for ACK,
        which gets none and returns None)."""
        mf = msg.get("max-forwards")
        if mf is None:
            msg.add_before("via", "Max-Forwards", "70")
        else:
            msg.set("Max-Forwards", str(min(int(mf), 256) - 1))
        proto = out.proto.upper()
        if msg.method == "ACK":
            seed = f"{msg.via.branch}{msg.callid}".encode(ENCODING, ERRORS)
            branch = f"z9hG4bKa{zlib.crc32(seed):x}"
            msg.add_first("Via", f"SIP/2.0/{proto} {out.hostport};branch={branch}")
            data = self.encode_for(out, msg)
            self.stats.fwd_requests += 1
            self.send(out, host, port, conn, data)
            return None
        branch = self.new_branch()
        msg.add_first("Via", f"SIP/2.0/{proto} {out.hostport};branch={branch};rport")
        data = self.encode_for(out, msg)
        ctx = ClientTransaction(self, branch, msg, out, host, port, conn)
        ctx.server = stx
        ctx.dialog = dlg
        ctx.direction = direction
        if stx is not None:
            stx.client = ctx
        if dlg is not None and msg.method == "INVITE" and direction == 0:
            dlg.invite_branch = branch
        self.client_txns[(branch, ctx.method)] = ctx
        self.stats.fwd_requests += 1
        ctx.start(data)
        return ctx

    @staticmethod
    def encode_for(out: Socket, msg: SipMessage) -> bytes:
        """``msg`` as bytes to send from ``out``; SipError 513 if UDP cannot carry it, which
        :func:`engine.failover.advance` answers (RFC 3261 §18.1.1 would switch to TCP, which a
        UDP-only next hop cannot take: docs/operations.md)."""
        data = msg.to_bytes()
        if out.proto == "udp" and len(data) > MAX_DATAGRAM[out.family]:
            raise SipError(513, "Message Too Large")
        return data

    def _on_cancel(
        self,
        msg: SipMessage,
        key: tuple,
        socket: Socket,
        src: tuple[str, int],
        conn: int | None,
    ) -> None:
        invite_key = (*key[:-1], "INVITE")
        inv = self.server_txns.get(invite_key)
        if inv is None:
            self._reply_stateless(msg, 481, "Call/Transaction Does Not Exist", socket, src, conn)
            return
        stx = ServerTransaction(self, key, msg, socket, src, conn)
        self.server_txns[key] = stx
        stx.to_tag = inv.to_tag
        self.reply(stx, 200, "OK")
        if inv.state is TxState.ACCEPTED and inv.dialog is not None:
            dlg_timer.on_race_condition(self, inv.dialog)  # the 2xx crossed this CANCEL
            return
        if inv.state is not TxState.PROCEEDING or inv.cancelled:
            return
        inv.cancelled = True
        if inv.dialog is not None and inv.dialog.state < DlgState.CONFIRMED_NA:
            inv.dialog.set_end_reason(EndReason.CANCELLED)  # not for a re-INVITE's CANCEL
        if inv.client is not None:
            dlg_req_within.cancel_branch(self, inv.client)
        else:
            self.reply(inv, 487, "Request Terminated")

    # -- responses ----------------------------------------------------------------------------

    def _on_response(self, msg: SipMessage) -> None:
        stats = self.stats
        stats.rcv_replies += 1
        stats.replies_by_class[f"{msg.status // 100}xx"] += 1
        try:
            via = msg.via
            _, method = msg.cseq
            msg.callid  # noqa: B018 - presence check
            msg.to  # noqa: B018 - parsed now, so that later steps cannot fail halfway
            if msg.status < 300 and msg.get("contact") is not None:
                msg.contact  # noqa: B018
        except SipError:
            stats.parse_errors += 1
            stats.drop_replies += 1
            return
        branch = via.branch or ""
        ctx = self.client_txns.get((branch, method))
        if ctx is None:
            if (
                method == "INVITE"
                and 200 <= msg.status < 300
                and via.host in self._local_hosts
                and (via.port or 5060) in self._local_ports
            ):
                self._forward_response_stateless(msg)
            else:
                stats.drop_replies += 1
            return
        ctx.on_response(msg)

    def _forward_response_stateless(self, msg: SipMessage) -> None:
        """A 2xx retransmission after the INVITE transaction is gone (its 32 s are over, or
        the server restarted since): route it by Via.  Any top Via with our address is ours
        (RFC 3261 §18.1.2), whatever its branch: a restarted server has another prefix."""
        msg.pop_first_value("via")
        try:
            via = msg.via
        except SipError:
            self.stats.drop_replies += 1
            return
        host = via.params.get("received") or via.host
        rport = via.params.get("rport")
        proto = via.transport.lower()
        if proto not in TRANSPORTS:
            proto = "udp"
        try:  # received and rport come from the wire: an ASCII host and a real port, or drop
            port = parse_number(rport, 65535, "rport") if rport else (via.port or 5060)
            if not port or not host.isascii():
                raise SipError(0, "Unroutable Via")
            out = self.socket_for(proto, None, host)
        except SipError:
            self.stats.drop_replies += 1
            return
        self.stats.fwd_replies += 1
        self.send(out, host, port, None, msg.to_bytes())

    # -- TransactionUser ----------------------------------------------------------------------

    def count_retransmission(self) -> None:
        self.stats.retransmissions += 1

    def server_terminated(self, txn: ServerTransaction) -> None:
        if self.server_txns.get(txn.key) is txn:
            del self.server_txns[txn.key]
        txn.client = None

    def client_terminated(self, txn: ClientTransaction) -> None:
        txn.attempt = None
        key = (txn.branch, txn.method)
        if self.client_txns.get(key) is txn:
            del self.client_txns[key]

    def client_response(self, txn: ClientTransaction, msg: SipMessage) -> None:
        if txn.handler is not None:
            txn.handler(txn, msg)
            return
        status = msg.status
        if txn.attempt is not None:
            if status == 503 and failover.retry(self, txn, f"503 from {txn.host}:{txn.port}"):
                return
            failover.answered(self, txn)
        if txn.cancel_pending and status < 200:
            txn.cancel_pending = False
            dlg_req_within.send_cancel(self, txn)
        if status == 100:
            return  # hop by hop
        if txn.dialog is not None:
            dlg_handlers.on_reply(self, txn, msg)
        stx = txn.server
        if stx is None:
            return
        attempt = txn.attempt
        if attempt is not None and attempt.original_cseq:
            msg.set("CSeq", f"{attempt.original_cseq} {txn.method}")  # renumbered request
        msg.pop_first_value("via")
        if stx.to_tag is None:
            stx.to_tag = msg.to.tag
        self.stats.fwd_replies += 1
        stx.respond(status, msg.to_bytes())

    def client_stalled(self, txn: ClientTransaction) -> None:
        if txn.handler is not None:  # a probe: silence is its answer
            txn.abandon()
            txn.handler(txn, None)
            return
        seconds = self.config.fr_timeout
        if failover.retry(self, txn, f"no answer from {txn.host}:{txn.port} in {seconds:g} s"):
            txn.abandon()

    def client_timeout(self, txn: ClientTransaction) -> None:
        if txn.state is TxState.TERMINATED and failover.retry(
            self, txn, f"no answer from {txn.host}:{txn.port}"
        ):
            return
        if txn.handler is not None:
            txn.handler(txn, None)
            return
        stx = txn.server
        if txn.method == "INVITE" and txn.state is TxState.PROCEEDING:
            # Timer C: cancel the ringing branch; the 487 (or the guard timer) answers upstream.
            dlg_req_within.cancel_branch(self, txn)
            return
        if txn.dialog is not None and txn.method == "INVITE" and txn.direction == 0:
            dlg_life.fail(self, txn.dialog)
        if stx is not None and stx.state in (TxState.TRYING, TxState.PROCEEDING):
            self.reply(stx, 408, "Request Timeout")
