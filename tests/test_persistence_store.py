"""The storage layer (engine/dlg_db.py, app/store/) and the dirty tracking of the engine, without
processes: rows round-trip every field, restore re-arms lifetimes and stats, the engine marks
each change, the SQLite file is versioned, locked and checked."""

from __future__ import annotations

import asyncio
import enum
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from test_engine_kit import CALLEE, TCP, UDP, Call, Out, Rig, one

from app.store import persistence
from app.store.persistence import COMMIT_INTERVAL, Persistence
from app.store.sqlite import SCHEMA_VERSION, SqliteStore, open_store, parse_db_url
from app.store.writer import ProcessWriter
from engine.dialog import CalleeLeg, Dialog, DlgState, Socket
from engine.dlg_db import (
    DIALOG_COLUMNS,
    DbError,
    dialog_row,
    expire,
    restore_dialogs,
    state_row,
)
from engine.proxy import Engine


def fake_dialog(
    i: int, *, timeout: int | None = None, state: DlgState = DlgState.CONFIRMED
) -> Dialog:
    """A confirmed dialog with every field set to something recognisable."""
    callid = f"call-{i}@test"
    from engine.dlg_table import callid_hash

    now = int(time.time())
    return Dialog(
        h_entry=callid_hash(callid, 4096),
        h_id=1000 + i,
        callid=callid,
        from_uri=f"sip:alice{i}@a.example",
        to_uri=f"sip:bob{i}@b.example",
        caller_tag=f"ftag{i}",
        caller_contact=f"sip:alice@127.0.0.1:{20000 + i % 1000}",
        caller_socket=Socket("udp", "127.0.0.1", 5060),
        invite_cseq=7,
        caller_route_set=("<sip:edge.a.example;lr>", "<sip:core.a.example;lr>"),
        callee_cseq=3,
        caller_sdp="v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\n",
        caller_source=("udp", "127.0.0.1", 20000 + i % 1000),
        callees=[
            CalleeLeg(tag=f"early{i}", contact="sip:x@127.0.0.1:1", caller_cseq=7),
            CalleeLeg(
                tag=f"ttag{i}",
                contact=f"sip:bob@127.0.0.1:{30000 + i % 1000}",
                caller_cseq=9,
                route_set=("<sip:gw.b.example;lr>",),
                socket=Socket("tcp", "127.0.0.1", 5060),
                sdp="v=0\r\no=b 1 1 IN IP4 127.0.0.1\r\n",
            ),
        ],
        confirmed_leg=1,
        state=state,
        user_flags="",
        timestart=now - 10,
        timeout=now + 3600 if timeout is None else timeout,
        lifetime=3600,
        local_cseq_caller=4,
        local_cseq_callee=11,
        created=time.time() - 12,
    )


def engine() -> Engine:
    return Engine([UDP, TCP])


FIELDS = (
    "h_entry h_id callid from_uri to_uri caller_tag caller_contact invite_cseq caller_route_set "
    "callee_cseq caller_sdp caller_sent_sdp caller_source confirmed_leg state user_flags "
    "timestart timeout lifetime end_reason local_cseq_caller local_cseq_callee"
).split()


def test_row_round_trip_every_field(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "d.db"), 4096)
    dlgs = [fake_dialog(i) for i in range(5)]
    store.write([dialog_row(d, 0.0, time.time()) for d in dlgs], ())
    eng = engine()
    restored, expired = restore_dialogs(eng, store.load(), eng.now)
    assert not expired
    by_id = {d.db_id: d for d in restored}
    for d in dlgs:
        r = by_id[d.db_id]
        for name in FIELDS:
            assert getattr(r, name) == getattr(d, name), name
        assert str(r.caller_socket) == "udp:127.0.0.1:5060"
        assert r.caller_socket is UDP  # the engine's own socket object
        assert r.callees[1].socket is TCP and r.callees[0].socket is None
        assert [vars_of(leg) for leg in r.callees] == [vars_of(leg) for leg in d.callees]
        assert eng.dialogs.get_by_did(d.did) is r
        assert r.timer is not None  # lifetime re-armed
    assert eng.stats.active_dialogs == 5 and eng.stats.early_dialogs == 0
    store.close()


def vars_of(leg: CalleeLeg) -> tuple[object, ...]:
    return (leg.tag, leg.contact, leg.caller_cseq, leg.route_set, str(leg.socket), leg.sdp)


def test_restore_keeps_ids_ahead_and_expires_overdue(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "d.db"), 4096)
    live = fake_dialog(1)
    overdue = fake_dialog(2, timeout=int(time.time()) - 5)
    store.write([dialog_row(d, 0.0, time.time()) for d in (live, overdue)], ())
    eng = engine()
    eng.wall_offset = time.time()
    restored, expired = restore_dialogs(eng, store.load(), eng.now)
    assert [d.callid for d in expired] == [overdue.callid]
    # A new dialog in the same bucket never reuses a restored id.
    h_entry, h_id = eng.dialogs.new_ids(live.callid)
    assert h_entry == live.h_entry and h_id > live.h_id
    expire(eng, expired, eng.now)
    byes = [s for s in eng.take_sends() if s.data.startswith(b"BYE ")]
    assert len(byes) == 2
    assert b"CSeq: 5 BYE" in byes[0].data  # max(callee_cseq 3, local 4) + 1 toward the caller
    assert b"CSeq: 12 BYE" in byes[1].data  # max(caller_cseq 9, local 11) + 1 toward callee
    assert eng.stats.expired_dialogs == 1 and eng.stats.active_dialogs == 1
    store.close()


def test_only_confirmed_dialogs_are_restored(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "d.db"), 4096)
    rows = [dialog_row(fake_dialog(i, state=s), 0.0, 0.0) for i, s in enumerate(DlgState)]
    store.write(rows, ())
    restored, _ = restore_dialogs(engine(), store.load(), 0.0)
    assert sorted(d.state for d in restored) == [DlgState.CONFIRMED_NA, DlgState.CONFIRMED]
    store.close()


def test_engine_reports_every_change_to_store() -> None:
    rig = Rig(report_changes=True)

    def changed() -> set[Dialog]:
        rig.take()
        dialogs = {c.dialog for c in rig.changes}
        rig.changes.clear()
        return dialogs

    call = Call(1)
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 180, "Ringing"), src=CALLEE)
    assert not changed()  # unconfirmed / early dialogs are not stored
    ok = one(rig.recv(call.reply(inv, 200, "OK", sdp=True), src=CALLEE), status=200)
    (dlg,) = changed()
    assert dlg.state is DlgState.CONFIRMED_NA
    rig.recv(call.ack(ok))
    assert changed() == {dlg} and dlg.state is DlgState.CONFIRMED
    reinvite = one(rig.recv(call.in_dialog("INVITE", ok)), method="INVITE")
    assert changed() == {dlg}
    rig.recv(call.answer_request(reinvite), src=CALLEE)
    assert changed() == {dlg}  # the answer's contact/SDP
    rig.recv(call.in_dialog("BYE", ok))
    assert changed() == {dlg} and dlg.state is DlgState.DELETED


def test_changes_not_reported_without_a_store() -> None:
    rig = Rig()
    call = Call(1)
    rig.call_up(call)
    assert not rig.changes


def test_schema_version_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    SqliteStore(str(path), 1024).close()
    db = sqlite3.connect(path)
    meta = dict(db.execute("SELECT key, value FROM meta"))
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert meta["hash_size"] == "1024"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(DbError, match="schema version 99, newer"):
        SqliteStore(str(path), 1024)


def test_hash_size_mismatch_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "d.db")
    SqliteStore(path, 4096).close()
    with pytest.raises(DbError, match="hash_size 4096.*--hash-size 4096"):
        SqliteStore(path, 2048)


def test_lock_excludes_a_second_store(tmp_path: Path) -> None:
    path = str(tmp_path / "d.db")
    first = SqliteStore(path, 4096)
    with pytest.raises(DbError, match="in use by another sipdlg"):
        SqliteStore(path, 4096)
    first.close()
    SqliteStore(path, 4096).close()  # released on close


def test_foreign_sqlite_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE accounts (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(DbError, match="not a sipdlg database"):
        SqliteStore(str(path), 4096)


def test_corrupt_page_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    store = SqliteStore(str(path), 4096)
    store.write([dialog_row(fake_dialog(i), 0.0, 0.0) for i in range(300)], ())
    store.close()
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for off in range(2 * page, len(data), page):  # scribble over every page but the first two
        data[off : off + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(DbError, match="corrupt"):
        SqliteStore(str(path), 4096)


def test_write_deletes_and_ended_records(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "d.db"), 4096)
    d = [fake_dialog(i) for i in range(3)]
    store.write([dialog_row(x, 0.0, 0.0) for x in d], ())
    record = {"ID": d[0].did, "db_id": str(d[0].db_id), "callid": d[0].callid, "ended": 10.0}
    store.write([], [d[0].db_id], [record])
    assert store.count() == 2
    assert store.ended() == [record]
    assert store.prune_ended(11.0) == 1 and store.ended() == []
    store.write([dialog_row(d[0], 0.0, 0.0)], (), replace_all=True)
    assert [r[0] for r in store.load()] == [d[0].db_id]
    store.close()


def test_db_urls(tmp_path: Path) -> None:
    assert parse_db_url("none") is None
    assert parse_db_url("sqlite:///x.db", "/data") == "/data/x.db"
    assert parse_db_url("sqlite:////abs/x.db", "/data") == "/abs/x.db"
    assert parse_db_url("sqlite:y.db", "/d") == "/d/y.db"
    assert parse_db_url("/abs/z.db") == "/abs/z.db"
    with pytest.raises(ValueError, match="unsupported"):
        parse_db_url("mysql://h/db")
    assert open_store("none", 4096) is None


def test_ack_writes_only_the_state(tmp_path: Path) -> None:
    """The ACK's 3 to 4 is a one-column update of the row the 200 wrote; any other change in
    the same group makes it a whole row again."""

    rig = Rig(report_changes=True)
    store = SqliteStore(str(tmp_path / "d.db"), 4096)
    db = rig.persistence = Persistence(rig.eng, store)
    call = Call(1)
    inv = one(rig.recv(call.invite()), method="INVITE")
    ok = one(rig.recv(call.reply(inv, 200, "OK", sdp=True), src=CALLEE), status=200)
    assert db.write_dirty()
    (row,) = store.load()
    rig.recv(call.ack(ok))
    (dlg,) = rig.persistence.dirty
    assert rig.persistence.state_only == {dlg}
    batch = db._changes()
    assert batch is not None
    assert batch.changes[0] == [state_row(dlg, rig.eng.wall())]
    store.write_batches([batch.changes])
    (after,) = store.load()
    state = DIALOG_COLUMNS.index("state")
    updated = DIALOG_COLUMNS.index("updated")
    assert after[state] == int(DlgState.CONFIRMED) and row[state] == int(DlgState.CONFIRMED_NA)
    assert [v for i, v in enumerate(after) if i not in (state, updated)] == [
        v for i, v in enumerate(row) if i not in (state, updated)
    ]
    # A re-INVITE after the ACK, before the next write: the whole row again.
    rig.recv(call.ack(ok))  # a retransmitted ACK changes nothing
    assert not rig.persistence.dirty
    rig.recv(call.in_dialog("INVITE", ok))
    assert rig.persistence.dirty == {dlg} and not rig.persistence.state_only
    batch = db._changes()
    assert batch is not None and len(batch.changes[0][0]) == len(DIALOG_COLUMNS)
    store.close()


def test_inline_commit_failure_keeps_dialogs_and_sends_anyway(tmp_path: Path) -> None:
    """Realtime on the event loop with a failing disk: the messages still leave (calls do
    not stall), the dialog stays dirty and is written by the next commit that works."""

    class FailingStore(SqliteStore):
        failing = True

        def write(self, *args: Any, **kwargs: Any) -> None:
            if self.failing:
                raise DbError("disk full")
            super().write(*args, **kwargs)

    rig = Rig(report_changes=True)
    store = FailingStore(str(tmp_path / "d.db"), 4096)
    db = rig.persistence = Persistence(rig.eng, store)
    db.release = lambda items: None  # started, realtime, no writer thread: commits inline
    call = Call(1)
    inv = one(rig.recv(call.invite()), method="INVITE")
    rig.recv(call.reply(inv, 200, "OK", sdp=True), src=CALLEE)
    (dlg,) = rig.persistence.dirty
    assert db.commit_inline(["200 OK"], now=10.0) == ["200 OK"]
    assert db.failures == 1 and rig.persistence.dirty == {dlg} and store.load() == []
    store.failing = False
    assert db.commit_inline(["ACK"], now=10.0 + COMMIT_INTERVAL / 2) is None  # not due yet
    assert db.waiting == ["ACK"]
    assert db.commit_inline([], now=10.0 + COMMIT_INTERVAL) == ["ACK"]
    assert [r[0] for r in store.load()] == [dlg.db_id] and not rig.persistence.dirty
    assert db.failures == 1
    store.close()


def test_a_failed_first_write_followed_by_an_ack_still_writes_the_whole_row(
    tmp_path: Path,
) -> None:
    """The 200's row is in a commit that fails, and the ACK (a state-only change) came while
    that commit was in flight: the next commit must write the whole row, not a state update
    of a row that does not exist (a dialog lost from the store)."""
    rig = Rig(report_changes=True)
    store = SqliteStore(str(tmp_path / "d.db"), 4096)
    db = rig.persistence = Persistence(rig.eng, store)
    call = Call(1)
    inv = one(rig.recv(call.invite()), method="INVITE")
    ok = one(rig.recv(call.reply(inv, 200, "OK", sdp=True), src=CALLEE), status=200)
    in_flight = db._changes()  # handed to the writer
    assert in_flight is not None
    rig.recv(call.ack(ok))  # meanwhile: state only
    db._committed([in_flight], DbError("store unreachable"))  # the writer's answer
    retry = db._changes()
    assert retry is not None
    (row,) = retry.changes[0]
    assert len(row) == len(DIALOG_COLUMNS)  # the whole row again
    store.write_batches([retry.changes])
    (stored,) = store.load()
    assert stored[DIALOG_COLUMNS.index("state")] == int(DlgState.CONFIRMED)
    store.close()


class Serving(NamedTuple):
    """A realtime store started as the server starts it, its writer process up."""

    rig: Rig
    store: SqliteStore
    db: Persistence
    released: list[list[Any]]
    writer: ProcessWriter


def serving(tmp_path: Path) -> Serving:
    """Call inside a running event loop; :meth:`Persistence.close` it at the end."""
    rig = Rig(report_changes=True)
    store = SqliteStore(str(tmp_path / "d.db"), 4096)
    db = rig.persistence = Persistence(rig.eng, store)
    released: list[list[Any]] = []
    db.start(released.append, asyncio.get_running_loop())
    writer = db.writer
    assert isinstance(writer, ProcessWriter) and writer.proc.poll() is None
    return Serving(rig, store, db, released, writer)


def answered(rig: Rig) -> tuple[Call, Out, Dialog]:
    """A call answered through ``rig``: its 200 OK as forwarded, and its (dirty) dialog."""
    call = Call(1)
    inv = one(rig.recv(call.invite()), method="INVITE")
    ok = one(rig.recv(call.reply(inv, 200, "OK", sdp=True), src=CALLEE), status=200)
    (dlg,) = rig.persistence.dirty
    return call, ok, dlg


def test_writer_process_commits_falls_back_and_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Realtime commits go to the writer process; if it dies, the groups in flight fail
    (dialogs dirty again, messages released), commits continue on the event loop, and a new
    writer process takes over."""
    monkeypatch.setattr(persistence, "WRITER_RESPAWN_DELAY", 0.0)

    async def scenario() -> None:
        rig, store, db, released, writer = serving(tmp_path)
        call, ok, dlg = answered(rig)
        assert db.dispatch(["200 OK"], 10.0) == []  # held until the child commits
        await db.settle()
        assert released == [["200 OK"]]
        assert [r[0] for r in store.load()] == [dlg.db_id]
        writer.proc.kill()
        writer.proc.wait()
        rig.recv(call.ack(ok))
        rig.recv(call.in_dialog("INVITE", ok))
        assert rig.persistence.dirty == {dlg}
        db.dispatch(["re-INVITE"], 20.0)
        for _ in range(200):
            if db.writer is None and not db.in_flight:
                break
            await asyncio.sleep(0.01)
        assert db.writer is None and db.failures == 1 and db.writer_kind == "event_loop"
        assert released[-1] == ["re-INVITE"] and rig.persistence.dirty == {dlg}  # sent, kept dirty
        assert db.dispatch(["200 re-INVITE"], 30.0) == ["200 re-INVITE"]  # on the loop
        assert not rig.persistence.dirty
        for _ in range(500):  # the background task starts a new one (about every second)
            if db.writer is not None:
                break
            await asyncio.sleep(0.01)
        again = db.writer
        assert isinstance(again, ProcessWriter) and again.proc.pid != writer.proc.pid
        assert db.writer_restarts == 1 and db.writer_kind == "process"
        rig.recv(call.in_dialog("BYE", ok))
        assert db.dispatch(["BYE"], 40.0) == []  # held until the new child commits the end
        await db.settle()
        assert released[-1] == ["BYE"] and store.load() == []
        db.close()
        assert again.proc.poll() is not None  # it exits with the server

    asyncio.run(scenario())


def test_writer_process_that_cannot_open_the_file_says_why(tmp_path: Path) -> None:
    """The child reports why it cannot open the file, and exits."""

    async def scenario() -> None:
        writer = ProcessWriter(
            str(tmp_path / "no-such-dir" / "d.db"),
            "normal",
            asyncio.get_running_loop(),
            lambda batches, error: None,
            lambda: None,
        )
        with pytest.raises(DbError, match="writer process: opening .* failed"):
            writer.wait_ready()
        assert writer.proc.poll() is not None

    asyncio.run(scenario())


def test_prune_in_steps_drops_only_expired_records(tmp_path: Path) -> None:
    """The hourly prune goes PRUNE_STEP records at a time, oldest first, and keeps the rest."""
    store = SqliteStore(str(tmp_path / "d.db"), 4096)
    now = time.time()
    old = [
        {"db_id": i, "ID": f"{i}", "callid": f"c{i}", "ended": now - 9000 + i} for i in range(25)
    ]
    new = [{"db_id": 100 + i, "ID": f"n{i}", "callid": f"n{i}", "ended": now} for i in range(3)]
    store.write([], [], old + new)
    db = Persistence(Rig().eng, store, retention=3600)
    persistence.PRUNE_STEP, step = 4, persistence.PRUNE_STEP
    try:
        assert asyncio.run(db.prune_in_steps()) == 25
    finally:
        persistence.PRUNE_STEP = step
    assert sorted(r["callid"] for r in store.ended()) == ["n0", "n1", "n2"]
    store.close()


def test_writer_process_takes_values_marshal_cannot(tmp_path: Path) -> None:
    """A row with a str subclass or an IntEnum in it (marshal refuses both) is encoded on the
    loop instead, and stored as the plain values."""

    class Text(str):
        pass

    class Number(enum.IntEnum):
        SEVEN = 7

    async def scenario() -> None:
        rig, store, db, released, _ = serving(tmp_path)
        dlg = answered(rig)[2]
        dlg.from_uri = Text(dlg.from_uri)
        dlg.local_cseq_caller = Number.SEVEN
        assert db.dispatch(["200 OK"], 10.0) == []
        await db.settle()
        assert released == [["200 OK"]] and db.failures == 0
        (row,) = store.load()
        assert row[DIALOG_COLUMNS.index("from_uri")] == str(dlg.from_uri)
        assert row[DIALOG_COLUMNS.index("local_cseq_caller")] == 7
        db.close()

    asyncio.run(scenario())


def test_a_stopped_writer_is_reported_and_its_messages_leave_when_it_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGSTOP the writer process with a commit in flight: the wait is logged with what is
    held; after SIGCONT the commit completes and the messages leave, in order."""

    async def scenario() -> None:
        rig, store, db, released, writer = serving(tmp_path)
        os.kill(writer.proc.pid, signal.SIGSTOP)
        try:
            answered(rig)
            assert db.dispatch(["200 OK"], 10.0) == []
            assert db.hold(["180 of the same call"])
            await asyncio.sleep(0.3)
            assert not db.check_stalled()  # not yet over STALL_AFTER
            db.in_flight[0].started -= persistence.STALL_AFTER
            with caplog.at_level("ERROR", logger="sipdlg.db"):
                assert db.check_stalled()
            assert "waited" in caplog.text and "2 messages and 1 dialogs" in caplog.text
            assert released == []
        finally:
            os.kill(writer.proc.pid, signal.SIGCONT)
        await db.settle()
        assert released == [["200 OK", "180 of the same call"]] and len(store.load()) == 1
        db.close()

    asyncio.run(scenario())
