"""The Redis store (``--db redis://...``) against a real ``redis-server``: the store contract
SQLite meets (rows round-trip, one-column state updates, deletes, ended-call records, pruning,
the hash_size check), per-node key prefixes, and a server killed with calls up that comes back
with every one of them from Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from helpers import SipdlgProcess, Sipp
from helpers.redis_server import RedisServer
from lifecycle_kit import dialogs, mi, mi_raw, wait_for
from test_persistence import (
    assert_cseq_above_seen,
    byes_after_restart,
    end_all,
    kill9,
    metric,
    restart,
    wait_dialogs,
)
from test_persistence_store import FIELDS, engine, fake_dialog

from app.store.redis_store import RedisStore
from engine.dlg_db import DIALOG_COLUMNS, DbError, dialog_row, restore_dialogs, state_row


def test_rows_round_trip_and_states_only_grow(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, 4096, "a")
    dlgs = [fake_dialog(i) for i in range(5)]
    store.write([dialog_row(d, 0.0, time.time()) for d in dlgs], ())
    state = DIALOG_COLUMNS.index("state")
    # A one-column state update, then an older whole row: the higher state is kept.
    dlgs[0].state = dlgs[0].state.__class__(4)
    store.write([state_row(dlgs[0], time.time())], ())
    eng = engine()
    restored, expired = restore_dialogs(eng, store.load(), eng.now)
    assert not expired and len(restored) == 5
    by_id = {d.db_id: d for d in restored}
    for d in dlgs:
        for name in FIELDS:
            assert getattr(by_id[d.db_id], name) == getattr(d, name), name
    assert [r[state] for r in store.load()][0] == 4
    store.close()


def test_deletes_ended_records_pruning_and_replace_all(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, 4096)
    d = [fake_dialog(i) for i in range(3)]
    store.write([dialog_row(x, 0.0, 0.0) for x in d], ())
    old = {"ID": d[0].did, "db_id": str(d[0].db_id), "callid": d[0].callid, "ended": 10.0}
    new = {"ID": d[1].did, "db_id": str(d[1].db_id), "callid": d[1].callid, "ended": 20.0}
    store.write([], [d[0].db_id], [old])
    store.write([], [d[1].db_id], [new])
    assert store.count() == 1
    assert store.ended() == [new, old]  # newest first
    assert store.ended(callid=d[0].callid) == [old]
    assert store.ended(limit=1, offset=1) == [old]
    assert store.prune_ended(11.0) == 1
    assert store.ended() == [new] and store.ended(callid=d[0].callid) == []
    store.write([dialog_row(d[0], 0.0, 0.0)], (), replace_all=True)
    assert [r[0] for r in store.load()] == [d[0].db_id]
    store.close()


def test_nodes_have_their_own_keys_and_hash_size_is_checked(redis_server: RedisServer) -> None:
    a = RedisStore(redis_server.url, 4096, "a")
    b = RedisStore(redis_server.url, 4096, "b")
    a.write([dialog_row(fake_dialog(1), 0.0, 0.0)], ())
    assert a.count() == 1 and b.count() == 0
    with pytest.raises(DbError, match="hash_size 4096"):
        RedisStore(redis_server.url, 1024, "a")
    keys = [str(k) for k in redis.Redis.from_url(redis_server.url, decode_responses=True).keys()]
    assert keys and all(k.startswith(("sipdlg:a:", "sipdlg:b:")) for k in keys)
    a.close()
    b.close()


def test_unreachable_redis_is_a_one_line_error(tmp_path: Path) -> None:
    dead = RedisServer(tmp_path)  # never started: nothing listens on its port
    with pytest.raises(DbError, match=f"cannot use redis://127.0.0.1:{dead.port}/0"):
        RedisStore(dead.url, 4096)


def test_kill9_restart_on_redis_keeps_every_call(
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
    redis_server: RedisServer,
) -> None:
    """50 established calls on a realtime Redis store, kill -9, restart: the same 50 IDs in
    state 4, ended by dlg_end_dlg with BYEs to both parties; the records are in Redis too."""
    db = redis_server.url
    uas = sipp_uas("uas_answer")
    server = sipdlg_server(uas_port=uas.port, db=db)
    uac = sipp("uac_wait_bye", remote=server.sip_address, calls=50, rate=50, timeout=120)
    uac.start()
    before = wait_dialogs(server, 50)
    kill9(server)
    server2 = restart(sipdlg_server, server, "sipdlg-after-kill", db=db)
    after = wait_dialogs(server2, 50, timeout=5)
    assert {d["ID"]: d for d in after} == {d["ID"]: d for d in before}
    stats = mi_raw(server2, "get_statistics", {"statistics": ["dialog:"]})["result"]
    assert stats["dialog:active_dialogs"] == 50
    end_all(server2, [d["ID"] for d in after])
    res = uac.wait(timeout=60)
    assert res.ok and res.successful == 50, res.describe()
    byes_after_restart(uas, 50)
    assert_cseq_above_seen(uac)
    assert dialogs(server2) == []
    reasons = [r["end_reason"] for r in mi(server2, "dlg_list_ended")["Dialogs"]]
    assert reasons.count("MI Termination") == 50
    assert "dialog persistence: redis://127.0.0.1" in server2.log_text()


def test_calls_go_on_while_redis_is_down_and_are_written_when_it_returns(
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
    redis_server: RedisServer,
) -> None:
    uas = sipp_uas("uas_answer")
    server = sipdlg_server(uas_port=uas.port, db=redis_server.url)
    uac = sipp("uac_wait_bye", remote=server.sip_address, calls=20, rate=5, limit=30, timeout=120)
    uac.start()
    wait_for(lambda: len(dialogs(server)) >= 3 or None, what="the first calls up")
    redis_server.stop()  # Redis goes away while calls are being set up
    up = wait_dialogs(server, 20, timeout=30)  # none of them waits for it
    assert all(d["state"] == 4 for d in up)
    assert metric(server, "sipdlg_db_degraded ") == 1.0
    redis_server.start()  # back, with what it had on disk (appendonly)
    check = RedisStore(redis_server.url, 4096)
    deadline = time.monotonic() + 20
    while check.count() < 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert check.count() == 20  # every dialog made while it was down is there now
    check.close()
    assert metric(server, "sipdlg_db_degraded ") == 0.0
    log = server.log_text()
    assert log.count("is unreachable: calls go on") == 1
    assert "answers again" in log
    end_all(server, [d["ID"] for d in up])
    res = uac.wait(timeout=60)
    assert res.ok and res.successful == 20, res.describe()
