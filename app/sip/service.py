"""The SIP service: the engine driven by asyncio: bytes in, effects out, timers ticked."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket as socketlib
import ssl
import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from engine.dialog import Dialog, Socket
from engine.dispatcher import DsState
from engine.errors import SipError
from engine.events import (
    DestinationChanged,
    DialogChanged,
    DialogEnded,
    Resolve,
    Send,
    SourceBlocked,
    SourceReleased,
    StateChanged,
)
from engine.locator import Query
from engine.proxy import VERSION, Engine, EngineConfig

from ..config import Settings
from ..gc_policy import GcPolicy
from ..observe.lifecycle import Lifecycle
from ..observe.metrics import counter, gauge
from ..observe.ratelog import RateLimitedLog, exception_cause
from ..store.persistence import COMMIT_INTERVAL, Persistence
from ..tls import TlsContexts, load_tls
from .interfaces import local_addresses
from .overload import OverloadControl, inode_of, udp_backlog
from .resolver import FAILURE_TTL, Resolver
from .transport import TcpConnection, UdpEndpoint

log = logging.getLogger("sipdlg")

UDP_BUFFER = 4 << 20
#: A bug's traceback is logged once per minute at most; every occurrence is counted in
#: ``sipdlg_internal_errors_total``.
BUG_LOG_PERIOD = 60.0
#: Linux: report ICMP errors (port or host unreachable) on unconnected UDP sockets, with the
#: address they concern, so that a dead next hop fails over at once (ip(7), ipv6(7)).
IP_RECVERR = getattr(socketlib, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socketlib, "IPV6_RECVERR", 25)
#: Seconds a TLS peer has to finish its handshake, accepted or opened (asyncio's default: 60).
TLS_HANDSHAKE_TIMEOUT = 10.0


class SipService:
    """Owns the engine and wires it to asyncio: feeds it bytes, flushes its outbox, ticks it."""

    def __init__(
        self,
        settings: Settings,
        loop: asyncio.AbstractEventLoop | None = None,
        tls: TlsContexts | None = None,
    ) -> None:
        self.settings = settings
        self.tls = tls if tls is not None else load_tls(settings)
        self.loop = loop or asyncio.get_running_loop()
        self.version = VERSION
        self.revision: str | None = None
        self.started_at = time.time()
        server_header, user_agent_header = settings.header_values()
        config = EngineConfig(
            next_hops=settings.destinations(),
            relay_allow=tuple(settings.relay_allow),
            fr_timeout=float(settings.fr_timeout),
            probe_interval=float(settings.probe_interval),
            local_hosts=tuple(local_addresses()) if settings.has_wildcard_listen() else (),
            default_timeout=settings.default_timeout,
            hash_size=settings.hash_size,
            max_message_size=settings.max_message_size,
            delete_delay=settings.delete_delay,
            bye_on_timeout=settings.bye_on_timeout,
            ping=settings.ping,
            ping_interval=settings.ping_interval,
            ping_method=settings.ping_method,
            ping_timeout=settings.ping_timeout,
            race_condition_timeout=settings.race_condition_timeout,
            report_changes=settings.stores_changes(),
            server_header=server_header,
            user_agent_header=user_agent_header,
            pike=settings.pike_config(),
        )
        self.sockets = settings.sockets()
        self.engine = Engine(self.sockets, config, wall_offset=time.time() - self.loop.time())
        self.resolver = Resolver(
            settings.dns_server_addresses(),
            transports={s.proto for s in self.sockets},
            families={s.family for s in self.sockets},
        )
        #: The host name each TLS target address was resolved from (SNI, certificate check).
        self._server_names: dict[tuple[str, int], str] = {}
        #: Transport errors: one WARNING per peer and cause a minute, however many messages
        #: meet it.
        self.transport_log = RateLimitedLog(log, 60.0)
        # Ended-call records, events (SSE, webhooks), metrics: app/observe/lifecycle.py.
        self.lifecycle = Lifecycle(
            self,
            ended_records=settings.ended_records,
            webhooks=settings.webhook,
            event_queue=settings.event_queue,
            webhook_timeout=settings.webhook_timeout,
        )
        self.records = self.lifecycle.records
        self.mi_requests = self.lifecycle.mi_requests
        self._udp: dict[int, asyncio.DatagramTransport] = {}
        self._tcp_servers: list[asyncio.base_events.Server] = []
        self._conns: dict[int, TcpConnection] = {}
        #: Stream connections by (proto, peer address, peer port), for reuse.
        self._conn_by_peer: dict[tuple[str, str, int], TcpConnection] = {}
        self._next_conn = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = float("inf")
        self._literal: dict[str, bool] = {}
        self._sweeper: asyncio.Task[None] | None = None
        #: Every socket bound (start), and not yet told to stop taking calls (drain).
        self.listening = False
        self.draining = False
        #: Dialog persistence (app/store/persistence.py), set by run() unless ``--db none``.
        self.db: Persistence | None = None
        self._flush_handle: asyncio.Handle | None = None
        self.gc = GcPolicy(settings.gc_rescan_period, live=self.engine.held)
        #: Messages and timer runs that raised inside the engine (a bug): all counted, a
        #: traceback logged for the first of each cause per minute.
        self.internal_errors = 0
        self.bug_log = RateLimitedLog(log, BUG_LOG_PERIOD)
        #: What peers do, one line per cause and second at most (transports, resolution).
        self.peer_log = RateLimitedLog(logging.getLogger("sipdlg.transport"))
        self.overload = OverloadControl(
            self.loop,
            self._set_overload,
            lambda: self.engine.stats.shed_invites,
            lag_ms=settings.overload_lag_ms,
            queue_kb=settings.overload_queue_kb,
            recover=settings.overload_recover,
            retry_after=settings.overload_retry_after,
            backlog=lambda: udp_backlog(self._udp_inodes),
        )
        self._udp_inodes: list[int] = []
        self.lifecycle.metric_sources += [self, self.gc, self.overload]

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        expired: list[Dialog] = []
        if self.db is not None:  # restored before the sockets open: no request misses them
            self.lifecycle.metric_sources.append(self.db)
            self.db.attach_records(self.records)
            expired = self.db.restore(self.loop.time())[1]
        for sock in self.sockets:
            if sock.proto == "udp":
                udp = _bind_udp(sock)
                self._udp_inodes.append(inode_of(udp.fileno()))
                transport, _ = await self.loop.create_datagram_endpoint(
                    functools.partial(UdpEndpoint, self, sock, udp), sock=udp
                )
                self._udp[id(sock)] = transport  # type: ignore[assignment]
            else:
                tls = self.tls.server if sock.proto == "tls" else None
                server = await self.loop.create_server(
                    functools.partial(self._accept, sock),
                    sock.host,
                    sock.port,
                    reuse_address=True,
                    ssl=tls,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if tls else None,
                )
                self._tcp_servers.append(server)
            log.info(
                "listening on %s%s", sock, f" as {sock.hostport}" if sock.advertised_host else ""
            )
        self.listening = True
        self._sweeper = self.loop.create_task(self._sweep_idle())
        await self.lifecycle.start()
        self.overload.start()
        if self.db is not None:
            # lifetime over while down: "Lifetime Timeout", BYEs
            self.db.expire(expired, self.loop.time())
            self.db.start(self._release, self.loop, self._wake)
            self.flush()

    def drain(self) -> None:
        """A graceful stop begins: new INVITEs get 503, and ``/health`` says not ready so that
        load balancers send new calls elsewhere."""
        self.draining = True
        self.engine.stop_accepting()

    def readiness(self) -> dict[str, str]:
        """The SIP part and the store's for ``GET /health`` (app/observe/health.py)."""
        if self.draining:
            sip = "shutting down"
        elif not self.listening:
            sip = "not listening"
        elif any(t.is_closing() for t in self._udp.values()) or not all(
            s.is_serving() for s in self._tcp_servers
        ):
            sip = "a socket is closed"
        else:
            sip = "ok"
        store = "none" if self.db is None else self.db.problem() or "ok"
        return {"sip": sip, "store": store}

    async def stop(self) -> None:
        self.overload.stop()
        self.listening = False
        await self.lifecycle.stop()
        if self._sweeper:
            self._sweeper.cancel()
        for server in self._tcp_servers:
            server.close()
        for conn in list(self._conns.values()):
            conn.close()
        for transport in self._udp.values():
            transport.close()
        if self._timer:
            self._timer.cancel()

    # -- engine driving -----------------------------------------------------------------------

    def feed(self, data: bytes, sock: Socket, src: tuple[str, int], conn: int | None) -> None:
        engine = self.engine
        db = self.db
        callid = ""
        try:
            callid = engine.receive(data, sock, src, conn, self.loop.time())
        except Exception as exc:  # a bug must cost one message, never the server
            self.internal_errors += 1
            self.bug_log.exception(
                exception_cause(exc), "error processing a message from %s:%s", src[0], src[1]
            )
        if db is None or not db.realtime or db.release is None:
            self.flush()
            return
        changed = self.dispatch_events()
        # Realtime: what this message caused waits for the commit of the dialogs it changed
        # (or of its call's earlier change); everything else leaves now.  One commit covers
        # every message read in this loop iteration (group commit).
        sends = engine.take_sends()
        if changed:
            db.note_dirty(callid)
        if sends:
            if changed or db.must_wait(callid):
                db.waiting.extend(sends)
            else:
                for item in sends:
                    self._send(item)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush_soon)

    def dispatch_events(self) -> bool:
        """Hand what the engine reported to its rooms: changes to the store, state changes
        and ended dialogs to the lifecycle (events, records).  True if a dialog changed in a
        way the store must write."""
        events = self.engine.take_events()
        if not events:
            return False
        changed = False
        db = self.db
        life = self.lifecycle
        for event in events:
            if type(event) is DialogChanged:
                changed = True
                if db is not None:
                    db.note_change(event.dialog, event.state_only)
            elif type(event) is StateChanged:
                life.state_changed(event)
            elif type(event) is DialogEnded:
                life.ended(event.dialog)
            elif type(event) is Resolve:
                self.loop.create_task(self._resolve(event.query))
            elif type(event) is DestinationChanged:
                if event.state == DsState.ACTIVE:
                    log.info("next hop %s is up", event.uri)
                else:
                    log.warning("next hop %s is down: %s", event.uri, event.reason)
            elif type(event) is SourceBlocked:
                log.warning(
                    "pike: blocking %s: more than %d requests in %g s; its new requests are "
                    "dropped until it slows down (pike_trusted exempts a trunk)",
                    event.source,
                    event.requests,
                    event.window,
                )
            elif type(event) is SourceReleased:
                log.warning("pike: releasing %s", event.source)
        return changed

    async def _resolve(self, query: Query) -> None:
        """Answer the engine's DNS question (RFC 3263) without blocking the loop."""
        try:
            targets, ttl = await self.resolver.locate(query)
        except Exception as exc:  # a resolver bug or an odd answer: a failed lookup
            log.warning("DNS lookup of %s failed: %s", query.host, exc)
            targets, ttl = [], FAILURE_TTL
        if not targets:
            self._warn(query.host, 0, "DNS: no address")
        for target in targets:
            if target.proto == "tls":  # its certificate must name the domain (RFC 5922 §4)
                self._remember_server_name(target.host, target.port, query.host)
        try:
            self.engine.resolved(query, targets, ttl, self.loop.time())
        except Exception as exc:
            self.internal_errors += 1
            self.bug_log.exception(
                exception_cause(exc), "error resuming requests for %s", query.host
            )
        self.flush()

    def _remember_server_name(self, address: str, port: int, name: str) -> None:
        """The name a TLS target was found by: sent as SNI and checked in its certificate
        when the engine's Send names only the address."""
        if len(self._server_names) > 10000:
            self._server_names.clear()
        self._server_names[(address, port)] = name

    def transport_error(self, proto: str, host: str, port: int, cause: str) -> None:
        """Nothing can reach ``proto:host:port``: the engine fails over at once."""
        self._warn(host, port, f"{proto}: {cause}")
        try:
            self.engine.transport_error(proto, host, port, cause, self.loop.time())
        except Exception as exc:
            self.internal_errors += 1
            self.bug_log.exception(
                exception_cause(exc), "error handling a transport error for %s:%s", host, port
            )
        self.flush()

    def _warn(self, host: str, port: int, cause: str) -> None:
        where = f"{host}:{port}" if port else host
        self.transport_log.warning(f"{where} {cause}", "%s: %s", where, cause)

    def metrics(self) -> Iterator[Metric]:
        """The service's part of ``/metrics``."""
        yield counter(
            "sipdlg_internal_errors",
            "Messages and timer runs that raised inside the engine (a bug: see the log)",
            self.internal_errors,
        )
        dispatcher = self.engine.dispatcher
        if dispatcher is not None:
            up = GaugeMetricFamily(
                "sipdlg_next_hop_up",
                "1 while a next hop is Active, 0 while Probing or Inactive (ds_list)",
                labels=["uri"],
            )
            hits = CounterMetricFamily(
                "sipdlg_next_hop_first_hits",
                "Requests that chose a next hop first (ds_list first_hit_counter)",
                labels=["uri"],
            )
            for d in dispatcher.destinations:
                up.add_metric([d.uri], 1.0 if d.state == DsState.ACTIVE else 0.0)
                hits.add_metric([d.uri], d.first_hit_counter)
            yield up
            yield hits
        yield gauge(
            "sipdlg_dns_waiting_queries",
            "DNS queries (RFC 3263) that requests are waiting for",
            self.engine.locator.pending(),
        )
        pike = self.engine.pike
        if pike is not None:
            yield counter(
                "sipdlg_pike_blocked",
                "Requests dropped because their source IP was over the rate limit",
                pike.dropped,
            )
            yield gauge(
                "sipdlg_pike_blocked_sources",
                "Source IPs over the rate limit now (MI pike_list)",
                len(self.blocked_sources()),
            )

    def blocked_sources(self) -> list[str]:
        """MI ``pike_list``: the source IPs over the rate limit now (none when it is off)."""
        pike = self.engine.pike
        return [] if pike is None else pike.blocked(self.loop.time())

    # -- what the MI may do (app.mi.commands.DialogOps) -----------------------------------------

    @property
    def has_db(self) -> bool:
        return self.db is not None

    def db_sync(self) -> None:
        """MI ``dlg_db_sync``: the stored dialogs become the ones in memory."""
        assert self.db is not None
        self.db.sync_all()

    def set_timeout(self, dlg: Dialog, seconds: int) -> bool:
        """MI ``dlg_set_timeout``: re-arm a dialog's lifetime at the loop's current time."""
        ok = self.engine.set_timeout(dlg, seconds, self.loop.time())
        self.flush()
        return ok

    def restore_db(self) -> int:
        """MI ``dlg_restore_db``: load stored dialogs missing from memory; how many came."""
        assert self.db is not None
        restored, expired = self.db.restore(self.loop.time(), skip_known=True)
        self.db.expire(expired, self.loop.time())
        self.flush()
        return len(restored)

    def _set_overload(self, retry_after: int | None, share: float) -> None:
        self.engine.set_overload(retry_after, self.loop.time(), share)

    def set_destination_state(self, address: str, state: str) -> bool:
        """MI ``ds_set_state``."""
        ok = self.engine.set_destination_state(address, state, self.loop.time())
        self.flush()
        return ok

    def _release(self, items: list[Send]) -> None:
        """Messages whose dialog changes are committed (realtime persistence)."""
        for item in items:
            self._send(item)

    def _wake(self) -> None:
        """A commit group is done and more wait: flush in this loop iteration's callbacks."""
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        self.flush()

    def end_dialog(
        self, dlg: Dialog, reason: str = "MI Termination", extra_headers: str = ""
    ) -> bool:
        ok = self.engine.end_dialog(dlg, reason, extra_headers, self.loop.time())
        self.flush()
        return ok

    def flush(self) -> None:
        """After any call into the engine: dispatch its events, send (or, in realtime, hand
        to the store) what it sends, and re-arm the timer for its next deadline."""
        engine = self.engine
        self.dispatch_events()
        outbox = engine.take_sends()
        db = self.db
        if db is not None and db.realtime:
            # Durable before the messages that caused it go out: the writer commits,
            # then releases them (and everything queued behind them, to keep the order).
            if db.release is None:  # not serving yet (restore, start-up expiries)
                if db.dirty or db.pending_ended:
                    db.write_dirty()
            elif outbox or db.waiting or db.dirty or db.pending_ended:
                # ``outbox`` is the engine's to read, never to change: rebind, do not mutate.
                ready = db.dispatch(outbox, self.loop.time())
                if ready is None:
                    outbox = []
                    if self._flush_handle is None and not db.in_flight:
                        self._flush_handle = self.loop.call_at(
                            db.last_commit + COMMIT_INTERVAL, self._flush_soon
                        )
                else:
                    outbox = ready
        for item in outbox:
            self._send(item)
        deadline = engine.next_deadline()
        if deadline is not None and deadline < self._timer_when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_when = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = float("inf")
        try:
            self.engine.handle_timers(self.loop.time())
        except Exception as exc:
            self.internal_errors += 1
            self.bug_log.exception(exception_cause(exc), "error in a timer")
        self.flush()

    # -- sending ------------------------------------------------------------------------------

    def _is_literal(self, host: str) -> bool:
        hit = self._literal.get(host)
        if hit is None:
            try:
                ipaddress.ip_address(host)
                hit = True
            except ValueError:
                hit = False
            self._literal[host] = hit
        return hit

    def _send(self, item: Send, server_name: str | None = None) -> None:
        """Write ``item``; ``server_name`` is the host name it was resolved from (TLS: SNI and
        the name the certificate must carry)."""
        if not self._is_literal(item.host):
            self.loop.create_task(self._resolve_and_send(item))
            return
        sock = item.socket
        if sock.proto == "udp":
            transport = self._udp.get(id(sock))
            if transport is not None:
                transport.sendto(item.data, (item.host, item.port))
            return
        conn = self._conns.get(item.conn) if item.conn is not None else None
        if conn is None or conn.closed:
            conn = self._conn_by_peer.get((sock.proto, item.host, item.port))
        if conn is None or conn.closed:
            if server_name is None and sock.proto == "tls":
                server_name = self._server_names.get((item.host, item.port))
            conn = self._connect(sock, item.host, item.port, server_name)
        conn.write(item.data)

    async def _resolve_and_send(self, item: Send) -> None:
        address = await self.resolver.address(item.host)
        if address is None:
            self.transport_error(item.socket.proto, item.host, item.port, "DNS: no address")
            return
        self._send(item._replace(host=address), server_name=item.host)

    # -- TCP and TLS --------------------------------------------------------------------------

    def _new_conn(self, sock: Socket) -> TcpConnection:
        self._next_conn += 1
        return TcpConnection(self, sock, self._next_conn)

    def _accept(self, sock: Socket) -> TcpConnection:
        return self._new_conn(sock)

    def _connect(
        self, sock: Socket, host: str, port: int, server_name: str | None = None
    ) -> TcpConnection:
        """Open a connection to ``host:port``; what is written meanwhile waits in the
        connection.  A TLS server must present a certificate for ``server_name`` (the host
        name the target was resolved from, also sent as SNI) or else for the address.  A
        connection that does not come up (refused, or TLS refused: a certificate that does
        not verify, a handshake that fails or times out) is a transport error: the engine
        fails over or answers 503 at once."""
        conn = self._new_conn(sock)
        self._conn_by_peer[(sock.proto, host, port)] = conn
        self._conns[conn.conn_id] = conn
        tls = self.tls.client if sock.proto == "tls" else None

        async def open_connection() -> None:
            try:
                await self.loop.create_connection(
                    lambda: conn,
                    host,
                    port,
                    ssl=tls,
                    server_hostname=(server_name or host) if tls else None,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if tls else None,
                )
            except OSError as exc:  # ssl.SSLError and TimeoutError are OSErrors too
                conn.connection_lost(exc)
                self.transport_error(sock.proto, host, port, failure_cause(exc))

        self.loop.create_task(open_connection())
        return conn

    def tcp_opened(self, conn: TcpConnection) -> None:
        self._conns[conn.conn_id] = conn
        self._conn_by_peer[(conn.socket.proto, *conn.peer)] = conn
        self.engine.stream_opened()

    def stream_failed(self, conn: TcpConnection, error: SipError, head: bytes) -> None:
        """A TCP peer broke the framing rules: the engine answers what it can read of the
        message (400, 513), then the connection closes (its stream position is lost)."""
        self.peer_log.info(
            f"framing {error.reason}",
            "tcp %s:%s: %s; closing",
            conn.peer[0],
            conn.peer[1],
            error.reason,
        )
        self.engine.stream_error(
            head, error, conn.socket, conn.peer, conn.conn_id, self.loop.time()
        )
        self.flush()
        conn.close()

    def tcp_closed(self, conn: TcpConnection) -> None:
        if self._conns.get(conn.conn_id) is conn:
            del self._conns[conn.conn_id]
        for peer, c in list(self._conn_by_peer.items()):
            if c is conn:
                del self._conn_by_peer[peer]

    async def _sweep_idle(self) -> None:
        limit = self.settings.tcp_idle_timeout
        while True:
            await asyncio.sleep(min(10, limit))
            cutoff = self.loop.time() - limit
            for conn in list(self._conns.values()):
                if conn.last_active < cutoff:
                    conn.close()


def failure_cause(exc: OSError) -> str:
    """Why a connection failed, in words fit for a log line and a Reason header."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "connect: timed out"
    return f"connect: {exc.strerror or exc}"


def _bind_udp(sock: Socket) -> socketlib.socket:
    """A bound UDP socket for ``sock``.  IPv6 sockets take IPv6 only (a dual-stack wildcard
    would hand the engine IPv4 peers as ``::ffff:a.b.c.d``, which no Via of theirs names);
    a port in use is an OSError that says which socket."""
    family = socketlib.AF_INET6 if sock.family == 6 else socketlib.AF_INET
    udp = socketlib.socket(family, socketlib.SOCK_DGRAM)
    try:
        if family == socketlib.AF_INET6:
            udp.setsockopt(socketlib.IPPROTO_IPV6, socketlib.IPV6_V6ONLY, 1)
            udp.setsockopt(socketlib.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            udp.setsockopt(socketlib.IPPROTO_IP, IP_RECVERR, 1)
        _grow_buffers(udp)
        udp.bind((sock.host, sock.port))
    except OSError as exc:
        udp.close()
        raise OSError(exc.errno, f"{sock}: {exc.strerror}") from None
    udp.setblocking(False)
    return udp


def _grow_buffers(sock: socketlib.socket) -> None:
    """Bigger UDP buffers absorb bursts instead of dropping them (each drop costs a T1 wait)."""
    for option in (socketlib.SO_RCVBUF, socketlib.SO_SNDBUF):
        try:
            sock.setsockopt(socketlib.SOL_SOCKET, option, UDP_BUFFER)
        except OSError:
            pass
