"""asyncio transports around the engine: UDP endpoints and TCP connections (both directions).

Thin on purpose: bytes in go to :meth:`SipService.feed`, bytes out come from the engine's outbox.
A TCP peer's garbage closes only that peer's connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from engine.dialog import Socket
from engine.framing import StreamFramer
from engine.message import SipError

if TYPE_CHECKING:
    from .service import SipService

log = logging.getLogger("sipdlg.transport")


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, service: SipService, socket: Socket) -> None:
        self.service = service
        self.socket = socket
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.service.feed(data, self.socket, (addr[0], addr[1]), None)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the transaction timers deal with the loss.
        log.debug("udp %s: %s", self.socket, exc)


class TcpConnection(asyncio.Protocol):
    """One TCP connection, accepted or opened by us; framed by Content-Length."""

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
