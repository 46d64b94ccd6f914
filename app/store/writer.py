"""Realtime commits in a child process: SQLite's work on the other core, no GIL shared.

The event loop builds each group's rows and sends them through a socket pair; the child
encodes their JSON, applies them on its own connection to the same file (SQLite's file
locks keep the two connections apart) and answers with the group's number.  The loop
releases the messages held for that group when the answer arrives.  Measured: without
SQLite's statements the realtime setting costs about 4 % against ``--db none``
(docs/performance.md), so this is where its cost went.

If the child dies, the groups in flight fail (their dialogs are dirty again, their messages
leave); app/store/persistence.py commits on the event loop until a new child is ready.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from engine.dlg_db import DbError

from .sqlite import apply_changes, encode_changes, tune

log = logging.getLogger("sipdlg.db")

#: A group number that tells the child to close and exit.
STOP = -1
#: The child's first answer: its connection is open (or why not).
READY = 0
#: How long the parent waits for READY (the child imports Python and opens the file).
START_TIMEOUT = 30.0


def _child_main(conn: Connection, path: str, synchronous: str) -> None:
    """The writer process: apply each group, answer ``(number, error or "")``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when it is over
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA busy_timeout=5000")
        tune(db, synchronous)
    except sqlite3.Error as exc:
        conn.send_bytes(marshal.dumps((READY, f"opening {path} failed: {exc}")))
        return
    conn.send_bytes(marshal.dumps((READY, "")))
    try:
        stopping = False
        while not stopping:
            # Everything that queued up while the last commit ran goes in one (group commit).
            numbers: list[int] = []
            batches: list[Any] = []
            try:
                while True:
                    number, sets, encoded = marshal.loads(conn.recv_bytes())
                    if number == STOP:
                        stopping = True
                        break
                    numbers.append(number)
                    batches.extend(sets if encoded else [encode_changes(s) for s in sets])
                    if not conn.poll():
                        break
            except (EOFError, OSError):
                return  # the parent is gone
            if numbers:
                try:
                    apply_changes(db, batches, encoded=True)
                    error = ""
                except sqlite3.Error as exc:
                    error = f"writing {path} failed: {exc}"
                for number in numbers:
                    conn.send_bytes(marshal.dumps((number, error)))
        conn.send_bytes(marshal.dumps((STOP, "")))
    finally:
        db.close()


class ProcessWriter:
    """The parent's side: the same ``submit``/``drain``/``stop`` as the writer thread; ``done``
    is called on the event loop with the groups committed, in order.  The child is
    ``python -m app.store.writer FD PATH SYNCHRONOUS`` on one end of a socket pair; it exits
    when the pair closes, so it never outlives the server (even after a kill -9)."""

    def __init__(
        self,
        path: str,
        synchronous: str,
        loop: asyncio.AbstractEventLoop,
        done: Callable[[list[Any], DbError | None], None],
        died: Callable[[], None],
    ) -> None:
        """Start the child; it is usable after :meth:`wait_ready` or :meth:`watch_ready`."""
        parent_sock, child_sock = socket.socketpair()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.store.writer",
                str(child_sock.fileno()),
                os.path.abspath(path),  # as ps shows it; the same file whatever the cwd
                synchronous,
            ],
            pass_fds=[child_sock.fileno()],
            env=_child_env(),
            stdin=subprocess.DEVNULL,
        )
        child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.loop = loop
        self.done = done
        self.died = died
        self.pending: deque[Any] = deque()
        self.number = 0
        self.alive = False

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Block until the child has opened the file (at start, before serving: the first
        calls must not wait for its start-up).  Raises DbError saying why it did not."""
        error = "it did not start"
        try:
            if self.conn.poll(timeout):
                _, error = marshal.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            pass
        if error:
            self._abandon()
            raise DbError(f"the database writer process: {error}")
        self._serve()

    def watch_ready(
        self, ready: Callable[[ProcessWriter], None], failed: Callable[[str], None]
    ) -> None:
        """Without blocking the loop (a restart while serving): ``ready(self)`` once the
        child has opened the file, else ``failed(reason)``."""
        fd = self.conn.fileno()

        def on_readable() -> None:
            self.loop.remove_reader(fd)
            error = "it exited at start"
            try:
                _, error = marshal.loads(self.conn.recv_bytes())
            except (EOFError, OSError, ValueError):
                pass
            if error:
                self._abandon()
                failed(f"the database writer process: {error}")
            else:
                self._serve()
                ready(self)

        self.loop.add_reader(fd, on_readable)

    def _serve(self) -> None:
        self.alive = True
        self.loop.add_reader(self.conn.fileno(), self._on_readable)
        # uvloop makes a watched descriptor non-blocking; the socket's reads and writes here
        # are whole messages (sends may wait for the child, drain() waits for its answers).
        os.set_blocking(self.conn.fileno(), True)

    def _abandon(self) -> None:
        """A child that never became ready: close our end (it exits on EOF) and reap it."""
        self.conn.close()
        self._reap()

    def submit(self, batch: Any) -> None:
        upserts, deletes, ended = batch.changes
        self.number += 1
        try:  # the child encodes the JSON columns and the records
            sets = [(list(upserts), list(deletes), list(ended))]
            payload = marshal.dumps((self.number, sets, False))
        except ValueError:  # a value marshal cannot take (a str or int subclass): encode here
            payload = marshal.dumps((self.number, [_plain(encode_changes(batch.changes))], True))
        self.pending.append(batch)
        try:
            self.conn.send_bytes(payload)
        except OSError:
            self._lost()

    def _answer(self) -> None:
        number, error = marshal.loads(self.conn.recv_bytes())
        if number == STOP:
            return
        batch = self.pending.popleft()
        self.done([batch], DbError(error) if error else None)

    def _on_readable(self) -> None:
        try:
            while self.alive and self.conn.poll():
                self._answer()
        except (EOFError, OSError):
            self._lost()

    def drain(self) -> None:
        """Block until every group sent is answered (their ``done`` calls included)."""
        try:
            while self.alive and self.pending:
                self._answer()
        except (EOFError, OSError):
            self._lost()

    def _lost(self) -> None:
        if not self.alive:
            return
        self.alive = False
        log.error("the database writer process exited; committing on the event loop meanwhile")
        self._close_socket()
        self.proc.poll()  # reaped if it has exited
        failed = list(self.pending)
        self.pending.clear()
        if failed:
            self.done(failed, DbError("the database writer process exited"))
        self.died()

    def _close_socket(self) -> None:
        try:
            self.loop.remove_reader(self.conn.fileno())
        except (ValueError, OSError):
            pass
        self.conn.close()

    def stop(self) -> None:
        if self.alive:
            self.drain()
        if self.alive:
            self.alive = False
            try:
                self.conn.send_bytes(marshal.dumps((STOP, [], True)))
                self.conn.recv_bytes()
            except (EOFError, OSError):
                pass
        if not self.conn.closed:
            self._close_socket()
        self._reap()

    def _reap(self) -> None:
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _plain(changes: tuple[list[Any], list[int], list[Any]]) -> tuple[list[Any], ...]:
    """Encoded rows with every value a plain str, int, float or None, as marshal wants."""

    def plain(value: Any) -> Any:
        if value is None or type(value) in (str, int, float, bytes):
            return value
        if isinstance(value, bool | int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        return str(value)

    upserts, deletes, ended = changes
    return (
        [tuple(plain(v) for v in r) for r in upserts],
        [int(d) for d in deletes],
        [tuple(plain(v) for v in r) for r in ended],
    )


def _child_env() -> dict[str, str]:
    """The parent's environment, with this package importable (after PYTHONPATH's entries,
    which may hold the compiled engine)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), root) if p)
    return env


if __name__ == "__main__":
    _child_main(Connection(int(sys.argv[1])), sys.argv[2], sys.argv[3])
