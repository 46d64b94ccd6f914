"""Dialogs survive restarts and crashes: real ``sipdlg serve`` processes, real SQLite files,
SIPp on both sides (issue 5).

Topology: SIPp UAC -> sipdlg -> SIPp UAS.  The restarted server listens on the same SIP port
(the parties' route sets point at it) and the same MI port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO_ROOT, SipdlgProcess, SipMessage, Sipp, free_port
from lifecycle_kit import mi, mi_raw

pytestmark = pytest.mark.sipp


# ------------------------------------------------------------------------------ helpers


def dialogs(server: SipdlgProcess) -> list[dict[str, Any]]:
    return mi_raw(server, "dlg_list")["result"]["Dialogs"]  # type: ignore[no-any-return]


def wait_dialogs(
    server: SipdlgProcess, count: int, state: int = 4, timeout: float = 30
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = dialogs(server)
        if len(got) == count and all(d["state"] == state for d in got):
            return got
        if time.monotonic() > deadline:
            states = sorted(d["state"] for d in got)
            raise AssertionError(f"wanted {count} dialogs in state {state}, have {states}")
        time.sleep(0.2)


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, NotADirectoryError):
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def kill9(server: SipdlgProcess) -> None:
    """SIGKILL the server; its database writer process (if any) must not outlive it."""
    assert server.proc is not None
    kids = children(server.proc.pid)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(k) for k in kids), "a child of the killed server is still running"


def sigterm(server: SipdlgProcess) -> int:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    return server.proc.wait(timeout=20)


def restart(
    make: Callable[..., SipdlgProcess], old: SipdlgProcess, name: str, **opts: Any
) -> SipdlgProcess:
    """A new server on the same SIP and MI ports as ``old``."""
    return make(uas_port=old.uas_port, port=old.port, mi=old.mi_listen, name=name, **opts)


def byes_after_restart(party: Sipp, count: int, timeout: float = 30) -> list[SipMessage]:
    byes = party.wait_received(method="BYE", count=count, timeout=timeout)
    assert len(byes) >= count, f"{party.name}: {len(byes)} BYEs of {count}"
    return byes


def assert_cseq_above_seen(party: Sipp) -> None:
    """Each BYE's CSeq is above every request CSeq this party received earlier in its call."""
    seen: dict[str, int] = {}
    checked = 0
    for msg in party.received():
        if not msg.is_request or msg.cseq is None or msg.call_id is None:
            continue
        number, method = msg.cseq
        if method == "ACK":
            continue
        if method == "BYE":
            assert number > seen.get(msg.call_id, 0), (
                f"{party.name}: BYE CSeq {number} not above {seen.get(msg.call_id)} "
                f"in {msg.call_id}"
            )
            checked += 1
        seen[msg.call_id] = max(seen.get(msg.call_id, 0), number)
    assert checked


def db_url(path: Path) -> str:
    return f"sqlite:///{path}"  # an absolute path: sqlite:////tmp/...


def end_all(server: SipdlgProcess, ids: list[str]) -> None:
    for did in ids:
        reply = mi_raw(server, "dlg_end_dlg", {"dialog_id": did})
        assert reply.get("result") == "OK", (did, reply)


# ------------------------------------------------------------------------------ crash


@pytest.mark.parametrize("db_sync", ["normal", "full"])
def test_kill9_restart_100_calls(
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
    tmp_path: Path,
    db_sync: str,
) -> None:
    """100 established calls, kill -9, restart on the same file: same 100 IDs in state 4;
    dlg_end_dlg on each reaches both parties with a higher CSeq; zero calls lost.  With
    ``--db-sync normal`` realtime commits run in the writer process (which exits with the
    server), with ``full`` on the writer thread (app/store/persistence.py)."""
    db = db_url(tmp_path / "dlg.db")
    uas = sipp_uas("uas_answer")
    server = sipdlg_server(uas_port=uas.port, db=db, db_sync=db_sync)
    uac = sipp("uac_wait_bye", remote=server.sip_address, calls=100, rate=50, timeout=120)
    uac.start()
    before = wait_dialogs(server, 100)
    assert server.proc is not None
    assert len(children(server.proc.pid)) == (1 if db_sync == "normal" else 0)  # the writer
    kill9(server)

    server2 = restart(sipdlg_server, server, "sipdlg-after-kill", db=db, db_sync=db_sync)
    after = wait_dialogs(server2, 100, timeout=5)
    assert sorted(d["ID"] for d in after) == sorted(d["ID"] for d in before)
    assert {d["ID"]: d["db_id"] for d in after} == {d["ID"]: d["db_id"] for d in before}
    by_id = {d["ID"]: d for d in before}
    for d in after:  # what dlg_list shows is unchanged (timestart, timeout, tags, routes)
        assert d == by_id[d["ID"]]
    stats = mi_raw(server2, "get_statistics", {"statistics": ["dialog:"]})["result"]
    assert stats["dialog:active_dialogs"] == 100
    assert stats["dialog:early_dialogs"] == 0

    end_all(server2, [d["ID"] for d in after])
    res = uac.wait(timeout=60)
    assert res.ok and res.successful == 100, res.describe()
    byes_after_restart(uas, 100)
    assert_cseq_above_seen(uac)
    assert_cseq_above_seen(uas)
    assert dialogs(server2) == []
    # The ended-call records are stored in the same database: back after the restart.
    reasons = [r["end_reason"] for r in mi(server2, "dlg_list_ended")["Dialogs"]]
    assert reasons.count("MI Termination") == 100


def metric(server: SipdlgProcess, line_start: str) -> float | None:
    """One sample of the server's ``/metrics`` (the first line starting with ``line_start``)."""
    url = server.mi_url.replace("/mi", "/metrics")
    with urllib.request.urlopen(url, timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return None


def test_writer_process_killed_under_traffic(
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
    tmp_path: Path,
) -> None:
    """The writer process is SIGKILLed while calls are being set up: no call fails, a new
    writer takes over, and every call (those committed on the loop meanwhile too) survives a
    kill -9 of the server."""
    db = db_url(tmp_path / "dlg.db")
    uas = sipp_uas("uas_answer")
    server = sipdlg_server(uas_port=uas.port, db=db)
    assert server.proc is not None
    uac = sipp("uac_wait_bye", remote=server.sip_address, calls=60, rate=20, timeout=120)
    uac.start()
    wait_until = time.monotonic() + 30
    while len(dialogs(server)) < 15 and time.monotonic() < wait_until:
        time.sleep(0.05)
    (writer,) = children(server.proc.pid)
    os.kill(writer, signal.SIGKILL)
    before = wait_dialogs(server, 60)
    deadline = time.monotonic() + 15
    while metric(server, "sipdlg_db_writer_restarts_total") != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(server, "sipdlg_db_writer_restarts_total") == 1
    assert metric(server, 'sipdlg_db_writer{kind="process"}') == 1
    (new_writer,) = children(server.proc.pid)
    assert new_writer != writer
    kill9(server)

    server2 = restart(sipdlg_server, server, "sipdlg-after-kill", db=db)
    after = wait_dialogs(server2, 60, timeout=5)
    assert sorted(d["ID"] for d in after) == sorted(d["ID"] for d in before)
    end_all(server2, [d["ID"] for d in after])
    res = uac.wait(timeout=60)
    assert res.ok and res.successful == 60, res.describe()
    byes_after_restart(uas, 60)


def test_in_dialog_requests_after_restart(
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
    tmp_path: Path,
) -> None:
    """Crash while calls are up; after the restart the parties' re-INVITE and BYE (sent on
    the Record-Route with its did) reach the other side through the restored dialogs."""
    db = db_url(tmp_path / "dlg.db")
    uas = sipp_uas("uas_answer")
    server = sipdlg_server(uas_port=uas.port, db=db)
    # INVITE, pause 6 s, re-INVITE, pause 6 s, BYE: the crash and restart happen in the pause.
    uac = sipp(
        "uac_reinvite", remote=server.sip_address, calls=10, rate=50, pause_ms=6000, timeout=60
    )
    uac.start()
    before = wait_dialogs(server, 10, timeout=5)
    kill9(server)
    server2 = restart(sipdlg_server, server, "sipdlg-after-kill", db=db)
    assert sorted(d["ID"] for d in dialogs(server2)) == sorted(d["ID"] for d in before)
    res = uac.wait(timeout=40)
    assert res.ok and res.successful == 10, res.describe()
    reinvites = uas.wait_received(
        lambda m: m.cseq is not None and m.cseq[0] == 2, method="INVITE", count=10
    )
    assert len(reinvites) == 10
    byes_after_restart(uas, 10)
    assert dialogs(server2) == []
    stats = mi_raw(server2, "get_statistics", {"statistics": ["active_dialogs"]})["result"]
    assert stats["dialog:active_dialogs"] == 0


# ------------------------------------------------------------------------------ clean stop


@pytest.mark.parametrize("mode", ["realtime", "delayed", "shutdown"])
def test_sigterm_restart_each_mode(
    mode: str,
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
    tmp_path: Path,
) -> None:
    db = db_url(tmp_path / "dlg.db")
    opts = {"db": db, "db_mode": mode, "db_update_period": 3600}
    uas = sipp_uas("uas_answer")
    server = sipdlg_server(uas_port=uas.port, **opts)
    uac = sipp("uac_wait_bye", remote=server.sip_address, calls=20, rate=50, timeout=60)
    uac.start()
    before = wait_dialogs(server, 20)
    assert sigterm(server) == 0
    assert "dialogs saved" in server.log_text()

    server2 = restart(sipdlg_server, server, f"sipdlg-{mode}", **opts)
    after = wait_dialogs(server2, 20, timeout=5)
    assert sorted(d["ID"] for d in after) == sorted(d["ID"] for d in before)
    end_all(server2, [d["ID"] for d in after])
    res = uac.wait(timeout=30)
    assert res.ok and res.successful == 20, res.describe()
    byes_after_restart(uas, 20)
    assert_cseq_above_seen(uac)
    assert_cseq_above_seen(uas)
    # The ends are saved too: a third start finds nothing to restore.
    assert sigterm(server2) == 0
    server3 = restart(sipdlg_server, server, f"sipdlg-{mode}-3", **opts)
    assert dialogs(server3) == []


def test_lifetime_runs_out_while_down(
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
    tmp_path: Path,
) -> None:
    db = db_url(tmp_path / "dlg.db")
    uas = sipp_uas("uas_answer")
    server = sipdlg_server(uas_port=uas.port, db=db, default_timeout=3)
    uac = sipp("uac_wait_bye", remote=server.sip_address, calls=5, rate=50, timeout=30)
    uac.start()
    wait_dialogs(server, 5, timeout=2.5)
    kill9(server)
    time.sleep(3.5)
    server2 = restart(sipdlg_server, server, "sipdlg-expired", db=db, default_timeout=3)
    res = uac.wait(timeout=20)
    assert res.ok and res.successful == 5, res.describe()
    byes_after_restart(uas, 5)
    assert dialogs(server2) == []
    stats = mi_raw(server2, "get_statistics", {"statistics": ["dialog:"]})["result"]
    assert stats["dialog:expired_dialogs"] == 5
    assert stats["dialog:active_dialogs"] == 0
    ended = mi(server2, "dlg_list_ended")["Dialogs"]
    assert [r["end_reason"] for r in ended] == ["Lifetime Timeout"] * 5


def test_mi_db_sync_and_restore(
    sipp: Callable[..., Sipp],
    sipp_uas: Callable[..., Sipp],
    sipdlg_server: Callable[..., SipdlgProcess],
    tmp_path: Path,
) -> None:
    """dlg_db_sync / dlg_restore_db replies, and their no-db errors (reference §5.4)."""
    db = db_url(tmp_path / "dlg.db")
    uas = sipp_uas("uas_answer")
    server = sipdlg_server(uas_port=uas.port, db=db, db_mode="shutdown")
    uac = sipp("uac_wait_bye", remote=server.sip_address, calls=3, rate=50, timeout=30)
    uac.start()
    before = wait_dialogs(server, 3)
    assert mi_raw(server, "dlg_db_sync") == {"jsonrpc": "2.0", "result": "OK", "id": 1}
    assert mi_raw(server, "dlg_restore_db") == {"jsonrpc": "2.0", "result": "OK", "id": 1}
    assert sorted(d["ID"] for d in dialogs(server)) == sorted(d["ID"] for d in before)
    # shutdown mode writes only at a clean stop; dlg_db_sync made the file current already.
    kill9(server)
    server2 = restart(sipdlg_server, server, "sipdlg-synced", db=db, db_mode="shutdown")
    after = wait_dialogs(server2, 3, timeout=5)
    assert sorted(d["ID"] for d in after) == sorted(d["ID"] for d in before)
    assert "dlg_db_sync" in mi_raw(server2, "which")["result"]
    assert mi_raw(server2, "which", {"command": "dlg_restore_db"})["result"] == [[]]
    assert mi_raw(server2, "dlg_db_sync", ["x"])["error"]["code"] == -32602
    end_all(server2, [d["ID"] for d in after])
    assert uac.wait(timeout=30).successful == 3

    nodb = sipdlg_server(db="none")
    assert mi_raw(nodb, "dlg_db_sync") == {
        "jsonrpc": "2.0",
        "error": {"code": 400, "message": "Cannot sync in no-db mode"},
        "id": 1,
    }
    assert mi_raw(nodb, "dlg_restore_db") == {
        "jsonrpc": "2.0",
        "error": {"code": 400, "message": "Cannot restore db in no-db mode!"},
        "id": 1,
    }


def test_graceful_stop_refuses_new_calls_then_second_signal_exits(
    sipdlg_server: Callable[..., SipdlgProcess], tmp_path: Path
) -> None:
    server = sipdlg_server(db=db_url(tmp_path / "dlg.db"))
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    rc = server.proc.wait(timeout=20)
    assert rc == 0
    log = server.log_text()
    assert "shutting down" in log and "dialogs saved" in log


# ------------------------------------------------------------------------------ bad files


def serve_once(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``sipdlg serve`` expected to refuse to start: returns its exit code and output."""
    port = free_port("both")
    cmd = [
        sys.executable, "-m", "app.cli", "serve",
        "--listen", f"udp:127.0.0.1:{port}", "--listen", f"tcp:127.0.0.1:{port}",
        "--mi-listen", f"127.0.0.1:{free_port('tcp')}", "--next-hop", "127.0.0.1:9",
        *args,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=20)


def refused(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("sipdlg: cannot start: "), proc.stderr
    for needle in needles:
        assert needle in line, line
    return line


def make_db(tmp_path: Path, name: str = "dlg.db", dialogs: int = 3) -> Path:
    """A valid sipdlg database holding a few confirmed dialogs (written by the store)."""
    from test_persistence_store import fake_dialog

    from app.store.sqlite import SqliteStore
    from engine.dlg_db import dialog_row

    path = tmp_path / name
    store = SqliteStore(str(path), 4096)
    rows = [dialog_row(fake_dialog(i), 0.0, time.time()) for i in range(dialogs)]
    store.write(rows, ())
    store.close()
    return path


def test_refuses_missing_directory(tmp_path: Path) -> None:
    proc = serve_once(tmp_path, "--db", db_url(tmp_path / "nope" / "deeper" / "dlg.db"))
    refused(proc, "does not exist")


def test_refuses_unsupported_url(tmp_path: Path) -> None:
    proc = serve_once(tmp_path, "--db", "mysql://localhost/opensips")
    assert proc.returncode != 0 and "unsupported database" in proc.stderr


def test_refuses_read_only_file(tmp_path: Path) -> None:
    path = make_db(tmp_path)
    path.chmod(0o444)  # refused even when running as root, who could write it anyway
    refused(serve_once(tmp_path, "--db", db_url(path)), "not writable")


def test_refuses_unwritable_directory(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can write any directory")  # covered by the read-only file test
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    refused(serve_once(tmp_path, "--db", db_url(ro / "dlg.db")), "not writable")


def test_refuses_second_instance(
    sipdlg_server: Callable[..., SipdlgProcess], tmp_path: Path
) -> None:
    path = tmp_path / "dlg.db"
    first = sipdlg_server(db=db_url(path))
    line = refused(serve_once(tmp_path, "--db", db_url(path)), "in use by another sipdlg")
    assert first.proc is not None and f"pid {first.proc.pid}" in line
    assert first.running


def test_refuses_truncated_and_garbage_files(tmp_path: Path) -> None:
    path = make_db(tmp_path, dialogs=200)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2 + 123)
    refused(serve_once(tmp_path, "--db", db_url(path)), "truncated")
    with open(path, "r+b") as fh:
        fh.truncate(50)
    refused(serve_once(tmp_path, "--db", db_url(path)), "not a SQLite database")
    with open(path, "r+b") as fh:
        fh.truncate(0)
    refused(serve_once(tmp_path, "--db", db_url(path)), "empty")
    path.write_bytes(b"this is no database\n" * 500)
    refused(serve_once(tmp_path, "--db", db_url(path)), "not a SQLite database")


def test_refuses_other_hash_size(tmp_path: Path) -> None:
    path = make_db(tmp_path)
    line = refused(serve_once(tmp_path, "--db", db_url(path), "--hash-size", "1024"))
    assert "hash_size 4096" in line and "--hash-size 4096" in line
