"""asyncio transports around the engine: UDP endpoints and stream connections, TCP or TLS
(asyncio's TLS transport hands the same protocol the decrypted bytes), in both directions.

Thin on purpose: bytes in go to :meth:`SipService.feed`, bytes out come from the engine's outbox.
A stream peer's garbage closes only that peer's connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket as socketlib
from typing import TYPE_CHECKING

from engine.dialog import Socket
from engine.framing import StreamFramer
from engine.message import SipError

if TYPE_CHECKING:
    from .service import SipService

log = logging.getLogger("sipdlg.transport")


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, service: SipService, socket: Socket, raw: socketlib.socket) -> None:
        self.service = service
        self.socket = socket
        #: The bound socket itself, whose error queue says which peer an ICMP error is about.
        self.raw = raw
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.service.feed(data, self.socket, (addr[0], addr[1]), None)

    def error_received(self, exc: Exception) -> None:
        """ICMP port or host unreachable: read which destination it concerns from the error
        queue (IP_RECVERR) and let the engine fail over instead of retransmitting for 32 s."""
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        for _ in range(64):
            try:
                _, _, _, addr = self.raw.recvmsg(512, 512, socketlib.MSG_ERRQUEUE)
            except OSError:
                return
            self.service.transport_error(self.socket.proto, addr[0], addr[1], cause)


class TcpConnection(asyncio.Protocol):
    """One TCP or TLS connection, accepted or opened by us; framed by Content-Length."""

    def __init__(self, service: SipService, socket: Socket, conn_id: int) -> None:
        self.service = service
        self.socket = socket
        self.conn_id = conn_id
        self.framer = StreamFramer(service.settings.max_message_size)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.last_active = 0.0
        self.pending: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        self.last_active = self.service.loop.time()
        self.service.tcp_opened(self)
        for data in self.pending:
            self.transport.write(data)  # type: ignore[union-attr]
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.service.loop.time()
        try:
            messages = self.framer.feed(data)
        except SipError as exc:
            self.service.stream_failed(self, exc, self.framer.rejected)
            return
        for message in messages:
            self.service.feed(message, self.socket, self.peer, self.conn_id)

    def write(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        elif not self.closed:
            self.transport.write(data)
            self.last_active = self.service.loop.time()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.service.tcp_closed(self)
