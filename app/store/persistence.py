"""The shell side of dialog persistence: when dirty dialogs are written, restore, MI hooks.

OpenSIPS dialog ``db_mode`` semantics:

* ``realtime``: a dialog's confirmed state is committed before its 2xx is forwarded and every
  later change before the message that caused it leaves.  ``SipService.feed`` sends at once
  what does not depend on a commit and leaves the rest in :attr:`Persistence.waiting`; one
  transaction then covers every dialog changed since the last one (group commit), at most
  every ``COMMIT_INTERVAL``, one group in flight at a time.  With ``--db-sync off|normal``
  the writer process commits (app/store/writer.py: SQLite on another core, no GIL shared); with
  ``full`` (an fsync per commit) a writer thread; either way the held messages are released
  when the group is committed (:meth:`Persistence.route`).  If the writer process cannot
  start or dies, commits run on the event loop (:meth:`Persistence.commit_inline`).
* ``delayed``: dirty dialogs are written every ``--db-update-period`` seconds and at shutdown.
* ``shutdown``: the whole table is written at a clean stop (and emptied after a restore, so a
  crash never resurrects calls that ended since).

Ended-call records go to the same database with the next write (realtime, delayed) or at stop
(shutdown), and are pruned after ``--ended-retention`` seconds.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric

from engine.dialog import Dialog, DlgState
from engine.dlg_db import (
    STORED_STATES,
    ChangeSet,
    DbError,
    dialog_row,
    expire,
    restore_dialogs,
    state_row,
)
from engine.dlg_records import RecordRing
from engine.proxy import Engine

from ..observe.histogram import LOOP_BUCKETS, Histogram
from ..observe.metrics import counter, gauge, histogram
from .base import DialogStore
from .sqlite import SqliteStore
from .writer import ProcessWriter

log = logging.getLogger("sipdlg.db")

DB_MODES = ("realtime", "delayed", "shutdown")
#: Ended-call records waiting for a write are capped (shutdown mode keeps them until the stop).
MAX_PENDING_ENDED = 100_000
PRUNE_EVERY = 3600.0
#: A writer process that died is replaced after this many seconds; one that could not start
#: is tried again after WRITER_RETRY_DELAY.  Commits run on the event loop meanwhile.
WRITER_RESPAWN_DELAY = 1.0
WRITER_RETRY_DELAY = 30.0
#: A commit group in flight this long is reported (the log, at most every STALL_LOG_EVERY s).
STALL_AFTER = 2.0
#: Seconds between retries of an unreachable store when nothing else triggers a commit.
DEGRADED_RETRY = 1.0
STALL_LOG_EVERY = 10.0
#: The hourly prune deletes this many records per statement, PRUNE_PAUSE seconds apart.
PRUNE_STEP = 2000
PRUNE_PAUSE = 0.02
#: Realtime: a commit starts at most this long after the previous one started.  Idle, a
#: change is committed at once; under load each commit takes everything that queued up in
#: the meantime, so the cost of a commit (WAL frames, the hand-off to the writer) is shared
#: by more dialogs.  Held messages wait at most this much longer.
COMMIT_INTERVAL = 0.005


class _CommitWriter(Protocol):
    """Commits groups away from the event loop (app.store.writer.ProcessWriter, _Writer)."""

    def submit(self, batch: _Batch) -> None: ...
    def drain(self) -> None: ...
    def stop(self) -> None: ...


class _Batch:
    """One flush's changes, the dialogs they came from, and the messages waiting for them."""

    __slots__ = ("changes", "dialogs", "held", "started", "fresh")

    def __init__(self, changes: ChangeSet, dialogs: list[Dialog], held: list[Any]) -> None:
        self.changes = changes
        self.dialogs = dialogs
        self.held = held
        self.started = time.monotonic()
        #: db_ids whose first row this batch writes: not stored if it fails.
        self.fresh: list[int] = []


class _Writer(threading.Thread):
    """Commits change sets off the event loop.  Whatever is submitted while a commit runs
    goes into the next transaction together (group commit); the loop is told through
    ``call_soon_threadsafe`` in submission order.  The loop thread only builds rows."""

    def __init__(
        self,
        store: DialogStore,
        loop: asyncio.AbstractEventLoop,
        done: Callable[[list[_Batch], DbError | None], None],
    ) -> None:
        super().__init__(name="sipdlg-db-writer", daemon=True)
        self.store = store
        self.loop = loop
        self.done = done
        self.cv = threading.Condition()
        self.queue: list[_Batch] = []
        self.busy = False
        self.stopping = False

    def submit(self, batch: _Batch) -> None:
        with self.cv:
            self.queue.append(batch)
            self.cv.notify()

    def run(self) -> None:
        # Persistence.route already spaces groups COMMIT_INTERVAL apart, one in flight.
        while True:
            with self.cv:
                while not self.queue and not self.stopping:
                    self.cv.wait()
                if not self.queue:
                    return
                batches, self.queue = self.queue, []
                self.busy = True
            error: DbError | None = None
            try:
                self.store.write_batches([b.changes for b in batches])
            except DbError as exc:
                error = exc
            except Exception as exc:  # never let the thread die silently
                error = DbError(f"writing failed: {exc!r}")
            with self.cv:
                self.busy = False
                self.cv.notify_all()
            try:
                self.loop.call_soon_threadsafe(self.done, batches, error)
            except RuntimeError:  # the loop is closed: nothing left to release
                pass

    def drain(self) -> None:
        """Block until everything submitted is committed (the loop callbacks may be pending)."""
        with self.cv:
            while self.queue or self.busy:
                self.cv.wait()

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify_all()
        self.join()


class Persistence:
    """Writes an engine's dialogs to a :class:`DialogStore` according to the db mode."""

    def __init__(
        self,
        engine: Engine,
        store: DialogStore,
        *,
        mode: str = "realtime",
        update_period: float = 60.0,
        retention: float = 7 * 86400.0,
        writer_thread: bool = False,
    ) -> None:
        if mode not in DB_MODES:
            raise ValueError(f"db_mode must be one of {', '.join(DB_MODES)}")
        self.engine = engine
        self.store = store
        self.mode = mode
        #: Realtime commits run in a writer process (app/store/writer.py: SQLite's work on the
        #: other core), on a writer thread with ``--db-sync full`` (an fsync per commit), or on
        #: the event loop if the process died or the store is not SQLite (docs/performance.md).
        self.writer_thread = writer_thread
        self.realtime = mode == "realtime"
        self.update_period = update_period
        self.retention = retention
        #: Dialogs changed since they were last handed to the store (the engine's
        #: ``DialogChanged`` effects, via :meth:`note_change`), and those of them whose state
        #: is all that changed (one column to update).
        self.dirty: set[Dialog] = set()
        self.state_only: set[Dialog] = set()
        #: db_ids that have a row in the store (so a dialog ending knows to delete it).
        self.persisted: set[int] = set()
        self.pending_ended: deque[dict[str, Any]] = deque(maxlen=MAX_PENDING_ENDED)
        #: Transactions committed and rows written by them (rows/writes: the group size).
        self.writes = 0
        self.rows = 0
        self.failures = 0
        self._last_error = 0.0
        self._task: asyncio.Task[None] | None = None
        #: Realtime: the writer (process or thread), the batches it has not finished, and how
        #: held messages are sent once their batch is committed (set by :meth:`start`).
        self.writer: _CommitWriter | None = None
        self.in_flight: deque[_Batch] = deque()
        #: Realtime: messages that wait for the next commit, the Call-IDs with changes not
        #: yet handed to the writer, and the Call-IDs in batches not yet committed (a count
        #: of batches each): a message of such a call waits too, so a call's messages stay in
        #: order, while every other call's messages leave at once.
        self.waiting: list[Any] = []
        self.dirty_callids: set[str] = set()
        self.unsettled: dict[str, int] = {}
        self.last_commit = -1.0
        self.release: Callable[[list[Any]], None] | None = None
        self.wake: Callable[[], None] | None = None
        #: The realtime writer process: wanted (SQLite, --db-sync off|normal), being started
        #: again, when the next start is due, how many times it was replaced.
        self.wants_process = False
        self.spawning: ProcessWriter | None = None
        self.respawn_at = 0.0
        self.writer_restarts = 0
        self.closed = False
        #: Realtime on a network store (Redis) that stopped answering: messages no longer
        #: wait for commits until one succeeds again (``sipdlg_db_degraded``).
        self.degraded = False
        self._last_stall_log = -STALL_LOG_EVERY
        #: Realtime: how long held messages waited for their commit (``/metrics``).
        self.commit_time = Histogram(LOOP_BUCKETS)

    # -- ended-call records -------------------------------------------------------------------

    def attach_records(self, ring: RecordRing) -> None:
        """Save every ended-call record the ring is given; the stored ones are loaded back into
        it first (oldest first, not counted as new ends)."""
        try:
            stored = self.store.ended(limit=ring.size) if ring.size else []
        except DbError as exc:
            log.warning("cannot load ended-call records: %s", exc)
            stored = []
        ring.load(reversed(stored))
        ring.subscribers.append(self.save_ended)

    def save_ended(self, record: dict[str, Any]) -> None:
        """Queue an ended-call record for the next write (``ended_dialogs`` table)."""
        # Realtime/delayed: the record rides with the write of the dialog's own end.
        self.pending_ended.append(record)

    # -- writing ------------------------------------------------------------------------------

    def _changes(self) -> _Batch | None:
        """The dirty dialogs and pending records as one change set (None if nothing to do);
        ``persisted`` is updated now, and put back by :meth:`_undo` if the write fails."""
        eng = self.engine
        dirty = self.dirty
        if not dirty and not self.pending_ended:
            return None
        upserts = []
        deletes = []
        persisted = self.persisted
        wall_offset = eng.wall_offset
        now = eng.wall()
        state_only = self.state_only
        fresh = []
        for dlg in dirty:
            state = dlg.state
            if state in STORED_STATES:
                if dlg in state_only and dlg.db_id in persisted:
                    upserts.append(state_row(dlg, now))
                else:
                    upserts.append(dialog_row(dlg, wall_offset, now))
                    if dlg.db_id not in persisted:
                        fresh.append(dlg.db_id)
                persisted.add(dlg.db_id)
            elif state is DlgState.DELETED and dlg.db_id in persisted:
                deletes.append(dlg.db_id)
                persisted.discard(dlg.db_id)
        ended = list(self.pending_ended)
        batch = _Batch((upserts, deletes, ended), list(dirty), [])
        batch.fresh = fresh
        dirty.clear()
        state_only.clear()
        self.dirty_callids.clear()
        self.pending_ended.clear()
        if not (upserts or deletes or ended):
            return None
        return batch

    def _undo(self, batch: _Batch) -> None:
        """A failed write: its dialogs are dirty again, its records pending again."""
        upserts, deletes, ended = batch.changes
        self.persisted.update(deletes)
        # Rows it would have written first are not stored: the next write must be whole
        # rows for them, not one-column state updates of rows that do not exist.
        self.persisted.difference_update(batch.fresh)
        self.dirty.update(batch.dialogs)
        self.pending_ended.extendleft(reversed(ended))

    def write_dirty(self) -> bool:
        """One transaction with every dirty dialog and pending record, on this thread; False if
        it failed (the dialogs stay dirty and are retried with the next write)."""
        if self.writer is not None:
            self.writer.drain()
        batch = self._changes()
        if batch is None:
            return True
        try:
            self.store.write(*batch.changes)
        except DbError as exc:
            self._undo(batch)
            self._failed(exc)
            return False
        self._count([batch])
        return True

    @property
    def writer_kind(self) -> str:
        """Where commits run now: ``process``, ``thread`` or ``event_loop``."""
        if isinstance(self.writer, ProcessWriter):
            return "process"
        return "event_loop" if self.writer is None else "thread"

    def held_messages(self) -> int:
        return len(self.waiting) + sum(len(b.held) for b in self.in_flight)

    def uncommitted_dialogs(self) -> int:
        return len(self.dirty) + sum(len(b.dialogs) for b in self.in_flight)

    def _count(self, batches: list[_Batch]) -> None:
        self.writes += 1
        for b in batches:
            upserts, deletes, ended = b.changes
            self.rows += len(upserts) + len(deletes) + len(ended)

    # -- realtime: commit groups -------------------------------------------------------------

    def note_change(self, dlg: Dialog, state_only: bool) -> None:
        """The engine reported a change of ``dlg`` worth storing."""
        if not state_only:
            self.dirty.add(dlg)
            self.state_only.discard(dlg)
        elif dlg not in self.dirty:
            self.dirty.add(dlg)
            self.state_only.add(dlg)

    def note_dirty(self, callid: str) -> None:
        """Realtime: a message of ``callid`` just changed its dialogs (a message only ever
        changes dialogs of its own Call-ID: they are matched by it); what that call sends
        from now on waits for the commit that makes the change durable."""
        self.dirty_callids.add(callid)

    def must_wait(self, callid: str) -> bool:
        """Whether a message of ``callid`` must queue behind a change not yet committed."""
        return callid in self.dirty_callids or callid in self.unsettled

    def submit(self, held: list[Any]) -> bool:
        """Realtime: hand the dirty dialogs to the writer together with ``held``, the
        messages that must not leave before they are committed.  False if nothing was dirty
        (the caller sends ``held`` itself)."""
        assert self.writer is not None
        batch = self._changes()
        if batch is None:
            return False
        batch.held = held
        unsettled = self.unsettled
        for dlg in batch.dialogs:
            unsettled[dlg.callid] = unsettled.get(dlg.callid, 0) + 1
        self.in_flight.append(batch)
        self.writer.submit(batch)
        return True

    def hold(self, items: list[Any]) -> bool:
        """Queue messages behind the last commit in flight (keeps the order on the wire)."""
        if not self.in_flight:
            return False
        self.in_flight[-1].held.extend(items)
        return True

    def dispatch(self, outbox: list[Any], now: float) -> list[Any] | None:
        """Realtime, serving: what may leave now of the waiting messages and ``outbox``, the
        rest held behind a commit (by the writer, or on the loop while there is none).  None:
        a commit is not due yet; flush again at ``last_commit + COMMIT_INTERVAL``, or when
        the group in flight is done (``wake``)."""
        if self.writer is None:
            return self.commit_inline(outbox, now)
        return self.route(outbox, now)

    def commit_inline(self, outbox: list[Any], now: float) -> list[Any] | None:
        """Realtime without a writer: commit on the event loop, at most every
        COMMIT_INTERVAL; returns what may leave now, or None if the commit is not due yet
        (``outbox`` then joins the waiting messages)."""
        if not (self.dirty or self.pending_ended):
            return self._take_waiting(outbox)
        if now < self.last_commit + COMMIT_INTERVAL:
            self.waiting.extend(outbox)
            return None
        self.last_commit = now
        started = time.monotonic()
        self.write_dirty()
        self.commit_time.observe(time.monotonic() - started)
        return self._take_waiting(outbox)

    def _take_waiting(self, outbox: list[Any]) -> list[Any]:
        """The waiting messages, then ``outbox``, in order; nothing waits any more."""
        items = self.waiting + outbox if self.waiting else outbox[:]
        self.waiting = []
        return items

    def route(self, outbox: list[Any], now: float) -> list[Any] | None:
        """Realtime with a writer: hand what is dirty to it, with the waiting messages and
        ``outbox`` behind it; returns the messages that may leave now (none if they wait for
        a commit).  One group is in flight at a time and groups start at most every
        COMMIT_INTERVAL, so a group carries everything that changed meanwhile and the loop
        pays one hand-off per group, not per message.  None: the group is not due yet, the
        messages wait (see :meth:`dispatch`)."""
        items = self._take_waiting(outbox)
        if self.degraded:
            # The store is unreachable: calls must not wait for it.  Changes are still
            # handed over, one group at a time, which is also how its return is noticed.
            due = not self.in_flight and now >= self.last_commit + DEGRADED_RETRY
            if (self.dirty or self.pending_ended) and due:
                self.last_commit = now
                self.submit([])
            return items
        if self.dirty or self.pending_ended:
            if self.in_flight or now < self.last_commit + COMMIT_INTERVAL:
                self.waiting = items
                return None
            self.last_commit = now
            if self.submit(items):
                return []
        if self.hold(items):
            return []
        return items

    def _committed(self, batches: list[_Batch], error: DbError | None) -> None:
        """On the loop, after the writer's transaction: release the held messages in order."""
        if error is not None:
            for b in batches:
                self._undo(b)
            self._failed(error)  # the messages still go: calls must not stall on a bad disk
            if not self.degraded and self.writer_thread:
                self.degraded = True
                log.warning(
                    "%s is unreachable: calls go on without waiting for it, their changes "
                    "are kept and written when it answers again",
                    self.store.where,
                )
            if self.degraded and self.wake is not None:
                asyncio.get_running_loop().call_later(DEGRADED_RETRY, self.wake)
        else:
            self._count(batches)
            if self.degraded:
                self.degraded = False
                log.warning(
                    "%s answers again: changes written, commits in realtime again", self.store.where
                )
        release = self.release
        unsettled = self.unsettled
        now = time.monotonic()
        for b in batches:
            self.commit_time.observe(now - b.started)
            if self.in_flight and self.in_flight[0] is b:
                self.in_flight.popleft()
            for dlg in b.dialogs:
                left = unsettled.get(dlg.callid, 0) - 1
                if left > 0:
                    unsettled[dlg.callid] = left
                else:
                    unsettled.pop(dlg.callid, None)
            if release is not None and b.held:
                release(b.held)
        if self.wake is not None and (self.waiting or self.dirty or self.pending_ended):
            self.wake()  # the next group is due

    async def settle(self) -> None:
        """Wait until every commit in flight is done and its messages released."""
        while self.in_flight or self.waiting:
            await asyncio.sleep(0.001)

    def sync_all(self) -> None:
        """Replace the stored dialogs by the ones in memory (MI ``dlg_db_sync``, shutdown
        mode at stop).  Raises DbError."""
        if self.writer is not None:
            self.writer.drain()
        eng = self.engine
        wall_offset = eng.wall_offset
        now = eng.wall()
        rows = [dialog_row(d, wall_offset, now) for d in eng.dialogs if d.state in STORED_STATES]
        self.store.write(rows, (), list(self.pending_ended), replace_all=True)
        self.writes += 1
        self.persisted = {row[0] for row in rows}
        self.pending_ended.clear()
        self.dirty.clear()
        self.state_only.clear()

    def _failed(self, exc: DbError) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._last_error > 5:
            self._last_error = now
            log.error(
                "%s (%d failed writes so far; dialogs kept in memory, retrying)", exc, self.failures
            )

    # -- restoring ----------------------------------------------------------------------------

    def restore(self, now: float, *, skip_known: bool = False) -> tuple[list[Dialog], list[Dialog]]:
        """Load every stored dialog into the engine; returns (restored, expired).

        The expired ones (lifetime over while down) must then be ended with :meth:`expire`
        once the transports can send the BYEs.  Raises DbError.
        """
        eng = self.engine
        started = time.perf_counter()
        if self.writer is not None:
            self.writer.drain()
        # Hundreds of thousands of new objects: the cyclic GC would rescan them many times.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            rows = self.store.load()
            restored, expired = restore_dialogs(eng, rows, now, skip_known=skip_known)
        finally:
            if gc_was_enabled:
                gc.enable()
        self.persisted.update(d.db_id for d in restored)
        if self.mode == "shutdown" and not skip_known:
            # Only a clean stop writes the table again: a crash must not bring these back.
            self.store.write((), (), (), replace_all=True)
            self.persisted.clear()
        elapsed = time.perf_counter() - started
        if rows or restored:
            log.info(
                "restored %d dialogs from %s in %.3f s (%d expired while down)",
                len(restored),
                self.store.where,
                elapsed,
                len(expired),
            )
        return restored, expired

    def expire(self, dialogs: list[Dialog], now: float) -> None:
        """End dialogs whose lifetime ran out while the server was down (BYEs both ways)."""
        if dialogs:
            expire(self.engine, dialogs, now)

    # -- watching it ------------------------------------------------------------------------

    def metrics(self) -> Iterator[Metric]:
        """The store's part of ``/metrics``."""
        counters = (
            ("sipdlg_db_commits", "Dialog-store transactions (groups)", self.writes),
            ("sipdlg_db_rows_written", "Rows written by them", self.rows),
            (
                "sipdlg_db_write_failures",
                "Failed writes (dialogs kept, written again)",
                self.failures,
            ),
            ("sipdlg_db_writer_restarts", "Writer processes started again", self.writer_restarts),
        )
        for name, doc, value in counters:
            yield counter(name, doc, value)
        yield gauge("sipdlg_db_uncommitted_dialogs", "Dialogs changed, not committed yet",
                    self.uncommitted_dialogs())  # fmt: skip
        yield gauge("sipdlg_db_held_messages", "Realtime: messages waiting for their commit",
                    self.held_messages())  # fmt: skip
        yield gauge("sipdlg_db_degraded", "1 while the store does not answer and calls go on "
                    "without waiting for it", int(self.degraded))  # fmt: skip
        yield histogram(
            "sipdlg_db_commit_seconds",
            "Realtime: from a group's hand-off to its commit (held messages wait this long)",
            self.commit_time,
        )
        writer = GaugeMetricFamily(
            "sipdlg_db_writer",
            "Where commits run: process (the default), thread (--db-sync full), event_loop",
            labels=["kind"],
        )
        for kind in ("process", "thread", "event_loop"):
            writer.add_metric([kind], 1 if self.writer_kind == kind else 0)
        yield writer

    # -- background work ----------------------------------------------------------------------

    def start(
        self,
        release: Callable[[list[Any]], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        """Background work; in realtime mode with ``release`` (the server's sender), commits
        run in a writer process (or thread) and held messages are released through
        ``release``; ``wake`` asks the server to flush when a group is done and more wait."""
        self.prune()
        if self.realtime and release is not None:
            self.release = release
            self.wake = wake
        if self.realtime and release is not None and self.writer_thread:
            self.writer = _Writer(self.store, loop or asyncio.get_running_loop(), self._committed)
            self.writer.start()
        elif self.realtime and release is not None and isinstance(self.store, SqliteStore):
            self.wants_process = True
            proc = self._spawn(loop or asyncio.get_running_loop())
            try:
                proc.wait_ready()
                self.writer = proc
            except DbError as exc:
                self._respawn_later(str(exc))
        self._task = asyncio.get_running_loop().create_task(self._background())

    def _spawn(self, loop: asyncio.AbstractEventLoop) -> ProcessWriter:
        assert isinstance(self.store, SqliteStore)
        return ProcessWriter(
            self.store.path, self.store.synchronous, loop, self._committed, self._writer_died
        )

    def _writer_died(self) -> None:
        """The writer process is gone: commit on the event loop until a new one is up."""
        self.writer = None
        self._respawn_later("the database writer process exited", WRITER_RESPAWN_DELAY)

    def _respawn_later(self, reason: str, delay: float = WRITER_RETRY_DELAY) -> None:
        self.spawning = None
        self.respawn_at = time.monotonic() + delay
        log.error("%s; committing on the event loop, a new writer process in %.0f s", reason, delay)

    def _respawn(self) -> None:
        """While serving: start a new writer process without blocking the loop; commits stay
        on the loop until it is ready."""
        proc = self._spawn(asyncio.get_running_loop())
        self.spawning = proc
        proc.watch_ready(self._respawned, self._respawn_later)

    def _respawned(self, proc: ProcessWriter) -> None:
        self.spawning = None
        if self.closed:
            proc.stop()
            return
        self.writer = proc
        self.writer_restarts += 1
        log.warning(
            "database writer process %d is up; commits leave the event loop again", proc.proc.pid
        )

    async def _background(self) -> None:
        next_prune = time.monotonic() + PRUNE_EVERY
        period = self.update_period if self.mode == "delayed" else 1.0
        while True:
            await asyncio.sleep(period)
            if self.mode == "delayed":
                self.write_dirty()
            if (
                self.wants_process
                and self.writer is None
                and self.spawning is None
                and time.monotonic() >= self.respawn_at
            ):
                self._respawn()
            self.check_stalled()
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY
                await self.prune_in_steps()

    def problem(self) -> str | None:
        """Why the store is not ready for ``GET /health``, or None: closed, its database
        unusable, the writer process it should commit in gone, or a commit stalled."""
        if self.closed:
            return "closed"
        trouble = self.store.problem()
        if trouble:
            return trouble
        if self.wants_process:
            writer = self.writer
            if not isinstance(writer, ProcessWriter) or writer.proc.poll() is not None:
                return "the database writer process is not running"
        if self.in_flight and time.monotonic() - self.in_flight[0].started >= STALL_AFTER:
            return f"a commit has waited over {STALL_AFTER:.0f} s"
        return None

    def check_stalled(self) -> bool:
        """Log (every STALL_LOG_EVERY s at most) when the oldest group in flight has waited
        over STALL_AFTER for its commit: a hung disk or a stopped writer holds every message
        that waits for it, and nothing else would say so.  True if it is stalled."""
        if not self.in_flight:
            return False
        now = time.monotonic()
        waited = now - self.in_flight[0].started
        if waited < STALL_AFTER:
            return False
        if now - self._last_stall_log >= STALL_LOG_EVERY:
            self._last_stall_log = now
            log.error(
                "a commit has waited %.1f s for the database writer (%s); %d messages and %d "
                "dialogs wait for it",
                waited,
                self.writer_kind,
                self.held_messages(),
                self.uncommitted_dialogs(),
            )
        return True

    def prune(self) -> None:
        """Drop expired ended-call records in one statement (at start, before serving)."""
        if self.retention <= 0:
            return
        try:
            gone = self.store.prune_ended(time.time() - self.retention)
        except DbError as exc:
            log.warning("%s", exc)
            return
        if gone:
            log.info("pruned %d ended-call records older than %d s", gone, self.retention)

    async def prune_in_steps(self) -> int:
        """The hourly prune while serving: PRUNE_STEP records per statement with a pause
        between, so an hour of records (millions at a high call rate) never stops the event
        loop, nor the writer process waiting for the write lock, for long."""
        if self.retention <= 0:
            return 0
        before = time.time() - self.retention
        total = 0
        while True:
            try:
                gone = self.store.prune_ended(before, PRUNE_STEP)
            except DbError as exc:
                log.warning("%s", exc)
                break
            total += gone
            if gone < PRUNE_STEP:
                break
            await asyncio.sleep(PRUNE_PAUSE)
        if total:
            log.info("pruned %d ended-call records older than %d s", total, self.retention)
        return total

    def close(self) -> None:
        """Final write according to the mode, then release the database."""
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.writer is not None:
            self.writer.stop()
            self.writer = None
        if self.spawning is not None:
            self.spawning.stop()
            self.spawning = None
        try:
            if self.mode == "shutdown":
                self.sync_all()
            else:
                self.write_dirty()
            log.info(
                "dialogs saved to %s (%d stored; %d transactions, %d rows since start)",
                self.store.where,
                len(self.persisted),
                self.writes,
                self.rows,
            )
        except DbError as exc:
            log.error("final write failed: %s", exc)
        finally:
            self.store.close()


def open_persistence(settings: Any, engine: Engine) -> Persistence | None:
    """The persistence the settings ask for (None for ``--db none``); DbError says why not."""
    import os

    from .sqlite import open_store, parse_db_url

    try:
        path = parse_db_url(settings.db, settings.data_dir)
    except ValueError as exc:
        raise DbError(str(exc)) from None
    if path is None:
        log.info("dialog persistence off (--db none): dialogs live in memory only")
        return None
    data_dir = os.path.abspath(settings.data_dir or ".")
    remote = "://" in path  # a Redis server, not a file
    if not remote and os.path.abspath(path).startswith(data_dir + os.sep):  # made if missing
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        except OSError as exc:
            raise DbError(f"cannot create --data-dir {settings.data_dir}: {exc.strerror}") from None
    store: DialogStore | None
    if remote:
        from .redis_store import RedisStore

        store = RedisStore(path, settings.hash_size, str(settings.node_id))
    else:
        store = open_store(
            settings.db,
            settings.hash_size,
            data_dir=settings.data_dir,
            synchronous=settings.db_sync,
        )
    assert store is not None
    log.info("dialog persistence: %s, db_mode %s", store.where, settings.db_mode)
    return Persistence(
        engine,
        store,
        mode=settings.db_mode,
        update_period=settings.db_update_period,
        retention=settings.ended_retention,
        # Redis's round trips wait on a thread of their own; SQLite's commits in a process.
        writer_thread=settings.db_sync == "full" or remote,
    )
