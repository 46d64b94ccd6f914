"""A SIP party on a real UDP socket, for flows SIPp cannot play (a UAS answering one INVITE
from two forks, a flood from one address): send text, wait for the message you expect."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from .sipmsg import SipMessage


class UdpPeer:
    """A bound UDP socket that sends SIP text and reads what arrives, message by message."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        #: Everything received, in order (what ``expect`` skipped included).
        self.received: list[SipMessage] = []

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def send(self, text: str, dest: tuple[str, int]) -> None:
        """``text`` written with ``\\n`` line ends goes out with CRLF."""
        data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        self.sock.sendto(data, dest)

    def expect(
        self, pred: Callable[[SipMessage], bool], what: str, timeout: float = 5.0
    ) -> SipMessage:
        """The next message for which ``pred`` holds, skipping others (100s, retransmissions);
        AssertionError naming ``what`` if none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [m.start_line for m in self.received[-8:]]
                raise AssertionError(f"{self.hostport}: no {what} within {timeout}s; saw {seen}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            msg = SipMessage(data.decode("utf-8", "surrogateescape"))
            self.received.append(msg)
            if pred(msg):
                return msg

    def quiet_for(self, seconds: float, pred: Callable[[SipMessage], bool]) -> list[SipMessage]:
        """What arrived within ``seconds`` that ``pred`` holds for (expected: nothing)."""
        start = len(self.received)
        try:
            self.expect(lambda m: False, "nothing", timeout=seconds)
        except AssertionError:
            pass
        return [m for m in self.received[start:] if pred(m)]

    def close(self) -> None:
        self.sock.close()


def is_request(method: str) -> Callable[[SipMessage], bool]:
    return lambda m: m.method == method


def is_reply(status: int, method: str) -> Callable[[SipMessage], bool]:
    return lambda m: m.status == status and m.cseq is not None and m.cseq[1] == method
