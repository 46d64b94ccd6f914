"""Dialog persistence (OpenSIPS dialog ``db_mode``): a storage interface and its SQLite backend.

The engine stays sans-I/O: it only records which dialogs changed (``Engine.dirty``, filled by
``Engine.mark_dirty``); the shell (``app/persistence.py``) decides when to hand them to a
:class:`DialogStore`, which writes them in one transaction.  Restoring is also split: the store
returns plain rows, :func:`restore_dialogs` rebuilds the dialogs inside an engine.

What is stored: every field of :class:`Dialog` and :class:`CalleeLeg` needed to list the call
and to end it correctly later (route sets, contacts, CSeqs including the ones the engine used,
sockets as ``proto:ip:port``, timestart/timeout/lifetime, end reason).  Only dialogs that reached
a confirmed state (3 or 4) are stored, as OpenSIPS does: an unanswered INVITE cannot outlive its
transaction anyway.  A row is deleted when its dialog reaches state 5; an ended-call record goes
to ``ended_dialogs`` instead, pruned after the retention period.

The SQLite file uses WAL, a versioned schema (``meta.schema_version``, migrations applied in
order at open), and records the ``hash_size`` the IDs were made with: a server started with a
different one refuses the file, since every ``ID``/``db_id`` would change meaning.
"""

from __future__ import annotations

import abc
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .dialog import CalleeLeg, Dialog, DlgState, Socket

if TYPE_CHECKING:
    from .proxy import Engine

SCHEMA_VERSION = 1

#: version -> statements that bring a database from version-1 to version.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE dialogs (
            db_id INTEGER PRIMARY KEY,
            h_entry INTEGER NOT NULL,
            h_id INTEGER NOT NULL,
            callid TEXT NOT NULL,
            from_uri TEXT NOT NULL,
            to_uri TEXT NOT NULL,
            caller_tag TEXT NOT NULL,
            caller_contact TEXT NOT NULL,
            caller_socket TEXT NOT NULL,
            caller_route_set TEXT NOT NULL,
            caller_source TEXT,
            invite_cseq INTEGER NOT NULL,
            callee_cseq INTEGER NOT NULL,
            caller_sdp TEXT,
            caller_sent_sdp TEXT,
            callees TEXT NOT NULL,
            confirmed_leg INTEGER NOT NULL,
            state INTEGER NOT NULL,
            user_flags TEXT NOT NULL,
            timestart INTEGER NOT NULL,
            timeout INTEGER NOT NULL,
            lifetime INTEGER NOT NULL,
            end_reason TEXT,
            local_cseq_caller INTEGER NOT NULL,
            local_cseq_callee INTEGER NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL
        )""",
        """CREATE TABLE ended_dialogs (
            seq INTEGER PRIMARY KEY,
            db_id INTEGER NOT NULL,
            id TEXT NOT NULL,
            callid TEXT NOT NULL,
            state INTEGER,
            end_reason TEXT,
            created REAL,
            confirmed REAL,
            ended REAL NOT NULL,
            duration REAL,
            record TEXT NOT NULL
        )""",
        "CREATE INDEX ended_dialogs_ended ON ended_dialogs (ended)",
    ],
}

DIALOG_COLUMNS = (
    "db_id",
    "h_entry",
    "h_id",
    "callid",
    "from_uri",
    "to_uri",
    "caller_tag",
    "caller_contact",
    "caller_socket",
    "caller_route_set",
    "caller_source",
    "invite_cseq",
    "callee_cseq",
    "caller_sdp",
    "caller_sent_sdp",
    "callees",
    "confirmed_leg",
    "state",
    "user_flags",
    "timestart",
    "timeout",
    "lifetime",
    "end_reason",
    "local_cseq_caller",
    "local_cseq_callee",
    "created",
    "updated",
)
_INSERT_ENDED = (
    "INSERT INTO ended_dialogs (db_id, id, callid, state, end_reason, created, confirmed, "
    "ended, duration, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

#: Rows per statement, largest first (the dialogs are upserted, not INSERT OR REPLACEd, which
#: would delete and re-insert the row).  The writer thread releases and takes back the GIL
#: around every statement it steps; under load the event loop holds the GIL most of the time,
#: so one statement per row made a commit of a few hundred rows wait for hundreds of
#: hand-offs.  Multi-row statements of a few fixed sizes (each prepared once, then cached by
#: sqlite3) keep a commit to a handful of steps.  256 rows x 27 columns stays under SQLite's
#: 32766 bound parameters.
_CHUNKS = (256, 64, 16, 4, 1)
_UPSERT_BY_SIZE = {
    n: (
        f"INSERT INTO dialogs ({', '.join(DIALOG_COLUMNS)}) VALUES "
        + ", ".join([f"({', '.join('?' * len(DIALOG_COLUMNS))})"] * n)
        + " ON CONFLICT (db_id) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in DIALOG_COLUMNS[1:])
    )
    for n in _CHUNKS
}
_DELETE_BY_SIZE = {n: f"DELETE FROM dialogs WHERE db_id IN ({', '.join('?' * n)})" for n in _CHUNKS}
_ENDED_BY_SIZE = {
    n: _INSERT_ENDED.partition(" VALUES ")[0]
    + " VALUES "
    + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * n)
    for n in _CHUNKS
}


def _in_chunks(db: sqlite3.Connection, by_size: dict[int, str], rows: Sequence[Any]) -> None:
    """Execute ``rows`` (tuples, or single values) through the multi-row statements."""
    start = 0
    total = len(rows)
    for size in _CHUNKS:
        sql = by_size[size]
        while total - start >= size:
            chunk = rows[start : start + size]
            if isinstance(chunk[0], tuple):
                db.execute(sql, [value for row in chunk for value in row])
            else:
                db.execute(sql, chunk)
            start += size


#: The length of a :func:`state_row` among the rows to upsert (a whole row has 27 columns).
STATE_ROW_LEN = 3


def tune(db: sqlite3.Connection, synchronous: str) -> None:
    """The settings of every connection that writes (the store's and the writer process's)."""
    db.execute(f"PRAGMA synchronous={synchronous.upper()}")
    db.execute("PRAGMA temp_store=MEMORY")
    db.execute("PRAGMA cache_size=-32768")


def apply_changes(
    db: sqlite3.Connection,
    batches: Sequence[ChangeSet],
    replace_all: bool = False,
    encoded: bool = False,
) -> None:
    """Apply change sets in one transaction on ``db`` (the store's connection, or the writer
    process's own).  The JSON columns and the ended-call records are encoded here (unless
    ``encoded``: by :func:`encode_changes` already), so that with the writer process that
    work runs there.  Raises sqlite3.Error; nothing is written then."""
    if not encoded:
        batches = [encode_changes(b) for b in batches]
    db.execute("BEGIN IMMEDIATE")
    try:
        if replace_all:
            db.execute("DELETE FROM dialogs")
        for upserts, deletes, ended in batches:
            rows = [r for r in upserts if len(r) > STATE_ROW_LEN]
            if rows:
                _in_chunks(db, _UPSERT_BY_SIZE, rows)
            if len(rows) < len(upserts):
                # States only grow: max() keeps a later whole row's state if the group holds
                # both for one dialog.
                db.executemany(
                    "UPDATE dialogs SET state = max(state, ?), updated = ? WHERE db_id = ?",
                    [r for r in upserts if len(r) == STATE_ROW_LEN],
                )
            if deletes:
                _in_chunks(db, _DELETE_BY_SIZE, deletes)
            if ended:
                _in_chunks(db, _ENDED_BY_SIZE, ended)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


#: States worth storing: an answered call (OpenSIPS inserts the row at confirmation).
STORED_STATES = (DlgState.CONFIRMED_NA, DlgState.CONFIRMED)


#: (rows to upsert, db_ids to delete, ended-call records): what one flush changes.
ChangeSet = tuple[Sequence[tuple[Any, ...]], Sequence[int], Sequence[dict[str, Any]]]


class DbError(Exception):
    """The database cannot be used; the message is one line saying why (shown at startup)."""


# --------------------------------------------------------------------------------------------
# Rows <-> dialogs (pure functions)
# --------------------------------------------------------------------------------------------


def _leg_json(leg: CalleeLeg) -> dict[str, Any]:
    return {
        "tag": leg.tag,
        "contact": leg.contact,
        "caller_cseq": leg.caller_cseq,
        "route_set": leg.route_set,
        "socket": str(leg.socket) if leg.socket is not None else None,
        "sdp": leg.sdp,
        "sent_sdp": leg.sent_sdp,
    }


#: The columns of a :func:`dialog_row` that are stored as JSON (the caller's route set, the
#: callee legs); :func:`encode_row` encodes them when the row is written.
_ROUTE_SET_COLUMN = DIALOG_COLUMNS.index("caller_route_set")
_LEGS_COLUMN = DIALOG_COLUMNS.index("callees")


def encode_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A :func:`dialog_row` with its JSON columns encoded, as the ``dialogs`` table has it."""
    return (
        row[:_ROUTE_SET_COLUMN]
        + (json.dumps(row[_ROUTE_SET_COLUMN]),)
        + row[_ROUTE_SET_COLUMN + 1 : _LEGS_COLUMN]
        + (json.dumps(row[_LEGS_COLUMN]),)
        + row[_LEGS_COLUMN + 1 :]
    )


def encode_changes(changes: ChangeSet) -> tuple[list[Any], list[int], list[Any]]:
    """A change set as its table rows: whole dialog rows with their JSON encoded, the ended-call
    records as :func:`ended_row` tuples (what :func:`apply_changes` writes)."""
    upserts, deletes, ended = changes
    return (
        [encode_row(r) if len(r) > STATE_ROW_LEN else r for r in upserts],
        list(deletes),
        [ended_row(r) for r in ended],
    )


def dialog_row(dlg: Dialog, wall_offset: float, now_wall: float) -> tuple[Any, ...]:
    """The ``dialogs`` row of a dialog (``wall_offset`` turns its monotonic times into Unix),
    its route set and legs still as Python values (:func:`encode_row`)."""
    src = dlg.caller_source
    return (
        dlg.db_id,
        dlg.h_entry,
        dlg.h_id,
        dlg.callid,
        dlg.from_uri,
        dlg.to_uri,
        dlg.caller_tag,
        dlg.caller_contact,
        str(dlg.caller_socket),
        dlg.caller_route_set,
        f"{src[0]}:{src[1]}:{src[2]}" if src else None,
        dlg.invite_cseq,
        dlg.callee_cseq,
        dlg.caller_sdp,
        dlg.caller_sent_sdp,
        [_leg_json(leg) for leg in dlg.callees],
        dlg.confirmed_leg,
        int(dlg.state),
        dlg.user_flags,
        dlg.timestart,
        dlg.timeout,
        dlg.lifetime,
        dlg.end_reason,
        dlg.local_cseq_caller,
        dlg.local_cseq_callee,
        dlg.created + wall_offset,
        now_wall,
    )


def state_row(dlg: Dialog, now_wall: float) -> tuple[Any, ...]:
    """A dialog whose state alone changed since its row was written: ``(state, updated,
    db_id)``, applied as a one-column update (see :func:`dialog_row` for the whole row)."""
    return (int(dlg.state), now_wall, dlg.db_id)


def split_socket(text: str) -> tuple[str, str, int]:
    """``proto:ip:port`` (IPv6 addresses may contain colons) to its parts."""
    proto, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    return proto, host.strip("[]"), int(port)


class SocketMap:
    """Stored ``proto:ip:port`` texts to the engine's own Socket objects.

    A socket that no longer exists (the listen addresses changed) maps to the first socket of
    the same transport, else to the first socket, so the call can still be ended.
    """

    def __init__(self, sockets: Sequence[Socket]) -> None:
        self.sockets = list(sockets)
        self.exact = {str(s): s for s in sockets}
        self.missing: set[str] = set()
        self._sources: dict[str, tuple[str, str, int]] = {}

    def source(self, text: str | None) -> tuple[str, str, int] | None:
        """A stored ``caller_source`` (``proto:ip:port``) as a tuple; parsed once per text."""
        if not text:
            return None
        hit = self._sources.get(text)
        if hit is None:
            hit = self._sources[text] = split_socket(text)
        return hit

    def get(self, text: str | None) -> Socket | None:
        if not text:
            return None
        hit = self.exact.get(text)
        if hit is not None:
            return hit
        self.missing.add(text)
        proto = text.partition(":")[0]
        for s in self.sockets:
            if s.proto == proto:
                return s
        return self.sockets[0]


_loads = json.JSONDecoder().decode


def dialog_from_row(row: Sequence[Any], sockets: SocketMap) -> Dialog:
    """Rebuild a dialog from a ``dialogs`` row (``created`` stays a Unix time here)."""
    (
        _db_id,
        h_entry,
        h_id,
        callid,
        from_uri,
        to_uri,
        caller_tag,
        caller_contact,
        caller_socket,
        caller_route_set,
        caller_source,
        invite_cseq,
        callee_cseq,
        caller_sdp,
        caller_sent_sdp,
        callees,
        confirmed_leg,
        state,
        user_flags,
        timestart,
        timeout,
        lifetime,
        end_reason,
        local_cseq_caller,
        local_cseq_callee,
        created,
        _updated,
    ) = row
    get = sockets.get
    legs = [
        CalleeLeg(
            tag=leg["tag"],
            contact=leg["contact"],
            caller_cseq=leg["caller_cseq"],
            route_set=tuple(leg["route_set"]),
            socket=get(leg["socket"]),
            sdp=leg["sdp"],
            sent_sdp=leg["sent_sdp"],
        )
        for leg in _loads(callees)
    ]
    socket = get(caller_socket)
    assert socket is not None
    return Dialog(
        h_entry=h_entry,
        h_id=h_id,
        callid=callid,
        from_uri=from_uri,
        to_uri=to_uri,
        caller_tag=caller_tag,
        caller_contact=caller_contact,
        caller_socket=socket,
        invite_cseq=invite_cseq,
        caller_route_set=tuple(_loads(caller_route_set)),
        callee_cseq=callee_cseq,
        caller_sdp=caller_sdp,
        caller_sent_sdp=caller_sent_sdp,
        caller_source=sockets.source(caller_source),
        callees=legs,
        confirmed_leg=confirmed_leg,
        state=DlgState(state),
        user_flags=user_flags,
        timestart=timestart,
        timeout=timeout,
        lifetime=lifetime,
        end_reason=end_reason,
        local_cseq_caller=local_cseq_caller,
        local_cseq_callee=local_cseq_callee,
        created=created,
    )


def ended_record(dlg: Dialog, wall_offset: float) -> dict[str, Any]:
    """An ended-call record built from a dialog at state 5 (the ``ended_hooks`` callback).

    Issue 4's in-memory ring may build richer records; any dict with at least ``ID``,
    ``db_id``, ``callid`` and ``ended`` (Unix seconds) can be given to ``save_ended``.
    """
    callee = dlg.callee
    created = dlg.created + wall_offset
    ended = (dlg.ended or dlg.created) + wall_offset
    confirmed = float(dlg.timestart) if dlg.timestart else None
    return {
        "ID": dlg.did,
        "db_id": dlg.db_id,
        "callid": dlg.callid,
        "from_uri": dlg.from_uri,
        "to_uri": dlg.to_uri,
        "caller_tag": dlg.caller_tag,
        "callee_tag": callee.tag if callee is not None else "",
        "state": int(dlg.state),
        "end_reason": dlg.end_reason,
        "created": round(created, 3),
        "confirmed": confirmed,
        "ended": round(ended, 3),
        "duration": round(max(0.0, ended - confirmed), 3) if confirmed else 0.0,
    }


# --------------------------------------------------------------------------------------------
# Restoring into an engine (sans-I/O: rows in, dialogs and timers out)
# --------------------------------------------------------------------------------------------


def restore_dialogs(
    eng: Engine, rows: Iterable[Sequence[Any]], *, skip_known: bool = False
) -> tuple[list[Dialog], list[Dialog]]:
    """Put stored dialogs back into ``eng`` with their IDs, stats and lifetime timers.

    Returns (restored, expired): the expired ones (lifetime over while the server was down)
    are in the table but not ended yet; call :func:`expire` once the transports can send.
    ``skip_known`` leaves out dialogs already in memory (MI ``dlg_restore_db``).
    """
    from .dlg_handlers import arm_lifetime

    sockets = SocketMap(eng.sockets)
    table = eng.dialogs
    stats = eng.stats
    now_wall = eng.wall()
    restored: list[Dialog] = []
    expired: list[Dialog] = []
    for row in rows:
        dlg = dialog_from_row(row, sockets)
        if dlg.state not in STORED_STATES:
            continue
        if dlg.h_entry >= table.hash_size:
            raise DbError(f"dialog {dlg.did} has h_entry {dlg.h_entry} beyond hash_size")
        if skip_known:
            bucket = table._buckets[dlg.h_entry]
            if bucket is not None and dlg.h_id in bucket:
                continue
        # Monotonic creation time relative to this process (negative if long ago: fine).
        dlg.created = eng.now - (now_wall - dlg.created)
        table.add(dlg)
        stats.active_dialogs += 1
        restored.append(dlg)
        if dlg.timeout:
            remaining = dlg.timeout - now_wall
            if remaining <= 0:
                expired.append(dlg)
            else:
                timeout = dlg.timeout
                arm_lifetime(eng, dlg, remaining)
                dlg.timeout = timeout
    return restored, expired


def expire(eng: Engine, dialogs: Iterable[Dialog]) -> None:
    """End dialogs whose lifetime ran out while the server was down ("Lifetime Timeout")."""
    from .dlg_handlers import on_lifetime

    for dlg in dialogs:
        if dlg.state is not DlgState.DELETED:
            on_lifetime(eng, dlg)


# --------------------------------------------------------------------------------------------
# Storage interface
# --------------------------------------------------------------------------------------------


class DialogStore(abc.ABC):
    """Where dialogs and ended-call records are kept.  One writer (this process)."""

    #: Printable location (for logs and errors).
    where: str = ""

    @abc.abstractmethod
    def write(
        self,
        upserts: Sequence[tuple[Any, ...]],
        deletes: Sequence[int],
        ended: Sequence[dict[str, Any]] = (),
        *,
        replace_all: bool = False,
    ) -> None:
        """In one transaction: upsert ``upserts`` (whole rows from :func:`dialog_row`, or
        :func:`state_row` updates), delete ``deletes`` (db_ids), add ``ended`` records.
        ``replace_all`` first empties the dialogs table (``dlg_db_sync``).
        Raises DbError; nothing is written then."""

    def write_batches(self, batches: Sequence[ChangeSet]) -> None:
        """Several change sets, applied in order, in one transaction (group commit)."""
        for upserts, deletes, ended in batches:
            self.write(upserts, deletes, ended)

    @abc.abstractmethod
    def load(self) -> list[tuple[Any, ...]]:
        """Every stored dialog row (columns as ``DIALOG_COLUMNS``), in db_id order."""

    @abc.abstractmethod
    def prune_ended(self, before: float, limit: int | None = None) -> int:
        """Drop ended-call records that ended before ``before`` (Unix), the oldest ``limit``
        of them if given; how many went."""

    @abc.abstractmethod
    def ended(
        self, callid: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Ended-call records, newest first (for ``dlg_list_ended`` across restarts)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release the database (and its lock)."""


# --------------------------------------------------------------------------------------------
# SQLite
# --------------------------------------------------------------------------------------------

SQLITE_MAGIC = b"SQLite format 3\x00"
SYNCHRONOUS = ("off", "normal", "full")


def parse_db_url(url: str, data_dir: str = ".") -> str | None:
    """``--db`` value to a SQLite file path; None for ``none``.

    ``sqlite:///rel/path.db`` and ``sqlite:////abs/path.db`` (SQLAlchemy style), ``sqlite:PATH``
    and a bare path are accepted; a relative path is taken under ``data_dir``.
    """
    text = url.strip()
    if text.lower() in ("none", "", "memory", "off"):
        return None
    if text.lower().startswith("sqlite:"):
        rest = text[len("sqlite:") :]
        if rest.startswith("///"):
            rest = rest[3:]
        elif rest.startswith("//"):
            raise ValueError(f"--db: {url!r}: use sqlite:///relative.db or sqlite:////abs.db")
        text = rest
    elif "://" in text:
        raise ValueError(f"--db: unsupported database {url!r} (only sqlite:///PATH or none)")
    if not text:
        raise ValueError(f"--db: {url!r} names no file")
    return text if os.path.isabs(text) else os.path.join(data_dir, text)


class SqliteStore(DialogStore):
    """The default backend: one SQLite file in WAL mode, locked against a second server."""

    def __init__(self, path: str, hash_size: int, synchronous: str = "normal") -> None:
        self.path = path
        self.synchronous = synchronous
        self.where = path
        self._lock_fd: int | None = None
        self.db: sqlite3.Connection | None = None
        self._check_file(path)
        self._lock(path + ".lock")
        try:
            self._open(hash_size, synchronous)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise DbError(f"database {path} is corrupt or unreadable: {exc}") from None
        except DbError:
            self.close()
            raise

    # -- opening ------------------------------------------------------------------------------

    @staticmethod
    def _check_file(path: str) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise DbError(f"database directory {directory} does not exist")
        if os.path.isdir(path):
            raise DbError(f"database path {path} is a directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise DbError(f"database directory {directory} is not writable")
        if not os.path.exists(path):
            return
        # A file without any write permission bit is read-only by intent, even for root.
        if not os.access(path, os.R_OK | os.W_OK) or not os.stat(path).st_mode & 0o222:
            raise DbError(f"database file {path} is not writable (read-only)")
        size = os.path.getsize(path)
        if size == 0:
            raise DbError(f"database file {path} is empty (truncated?); move it away to start anew")
        with open(path, "rb") as fh:
            head = fh.read(100)
        if len(head) < 100 or not head.startswith(SQLITE_MAGIC):
            raise DbError(f"database file {path} is not a SQLite database (corrupt or truncated)")
        page_size = int.from_bytes(head[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(head[28:32], "big")
        if page_size and size % page_size:
            raise DbError(f"database file {path} is truncated ({size} bytes)")
        wal = path + "-wal"
        has_wal = os.path.exists(wal) and os.path.getsize(wal) > 0
        if pages and size < pages * page_size and not has_wal:
            raise DbError(
                f"database file {path} is truncated ({size} of {pages * page_size} bytes)"
            )

    def _lock(self, lock_path: str) -> None:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DbError(f"cannot create lock file {lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise DbError(
                f"database {self.path} is in use by another sipdlg (pid {owner}); "
                "one server per database file"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _open(self, hash_size: int, synchronous: str) -> None:
        if synchronous not in SYNCHRONOUS:
            raise DbError(f"--db-sync must be one of {', '.join(SYNCHRONOUS)}")
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db = db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise DbError(f"database {self.path}: cannot use WAL journal mode (got {mode})")
        tune(db, synchronous)
        check = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if check != "ok":
            raise DbError(f"database {self.path} is corrupt: {check}")
        self._migrate(hash_size)

    def _migrate(self, hash_size: int) -> None:
        db = self.db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            version = int(meta.get("schema_version", 0))
            if version > SCHEMA_VERSION:
                raise DbError(
                    f"database {self.path} has schema version {version}, newer than this "
                    f"sipdlg understands ({SCHEMA_VERSION})"
                )
            if version == 0:
                tables = {
                    r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                if tables - {"meta", "sqlite_sequence"}:
                    raise DbError(f"database {self.path} is not a sipdlg database")
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[v]:
                    db.execute(statement)
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(v),),
                )
            stored = meta.get("hash_size")
            if stored is not None and int(stored) != hash_size:
                raise DbError(
                    f"database {self.path} holds dialogs made with hash_size {stored}, this "
                    f"server runs hash_size {hash_size}: their IDs would change; start with "
                    f"--hash-size {stored} or use another database"
                )
            if stored is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('hash_size', ?)", (str(hash_size),)
                )
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('created', ?)",
                    (str(int(time.time())),),
                )
            # A write at every start: a file that cannot be written fails here, not mid-call.
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_start', ?)",
                (str(int(time.time())),),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # -- DialogStore ----------------------------------------------------------------------------

    def write(
        self,
        upserts: Sequence[tuple[Any, ...]],
        deletes: Sequence[int],
        ended: Sequence[dict[str, Any]] = (),
        *,
        replace_all: bool = False,
    ) -> None:
        self._transaction([(upserts, deletes, ended)], replace_all)

    def write_batches(self, batches: Sequence[ChangeSet]) -> None:
        # One statement of each kind for the whole group: a dialog is upserted any number of
        # times and deleted at most once, at its end, so all upserts (in order), then all
        # deletes, leave the same rows as the change sets applied one by one.
        if len(batches) > 1:
            upserts = [row for b in batches for row in b[0]]
            deletes = [db_id for b in batches for db_id in b[1]]
            ended = [rec for b in batches for rec in b[2]]
            batches = [(upserts, deletes, ended)]
        self._transaction(batches, False)

    def _transaction(self, batches: Sequence[ChangeSet], replace_all: bool) -> None:
        db = self.db
        if db is None:
            raise DbError("database is closed")
        try:
            apply_changes(db, batches, replace_all)
        except sqlite3.Error as exc:
            raise DbError(f"writing {self.path} failed: {exc}") from None

    def load(self) -> list[tuple[Any, ...]]:
        if self.db is None:
            raise DbError("database is closed")
        try:
            cur = self.db.execute(f"SELECT {', '.join(DIALOG_COLUMNS)} FROM dialogs ORDER BY db_id")
            return cur.fetchall()
        except sqlite3.Error as exc:
            raise DbError(f"reading {self.path} failed: {exc}") from None

    def prune_ended(self, before: float, limit: int | None = None) -> int:
        if self.db is None:
            return 0
        try:
            if limit is None:
                cur = self.db.execute("DELETE FROM ended_dialogs WHERE ended < ?", (before,))
            else:
                cur = self.db.execute(
                    "DELETE FROM ended_dialogs WHERE rowid IN (SELECT rowid FROM ended_dialogs"
                    " WHERE ended < ? ORDER BY ended LIMIT ?)",
                    (before, limit),
                )
            return cur.rowcount
        except sqlite3.Error as exc:
            raise DbError(f"pruning {self.path} failed: {exc}") from None

    def ended(
        self, callid: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        if self.db is None:
            return []
        sql = "SELECT record FROM ended_dialogs"
        args: list[Any] = []
        if callid is not None:
            sql += " WHERE callid = ?"
            args.append(callid)
        sql += " ORDER BY seq DESC LIMIT ? OFFSET ?"
        args += [limit, offset]
        try:
            return [json.loads(r[0]) for r in self.db.execute(sql, args)]
        except sqlite3.Error as exc:
            raise DbError(f"reading {self.path} failed: {exc}") from None

    def count(self, table: str = "dialogs") -> int:
        assert table in ("dialogs", "ended_dialogs")
        if self.db is None:
            return 0
        return int(self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def close(self) -> None:
        db, self.db = self.db, None
        if db is not None:
            try:
                db.close()  # the last connection checkpoints the WAL into the file
            except sqlite3.Error:
                pass
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)


def ended_row(record: dict[str, Any]) -> tuple[Any, ...]:
    return (
        int(record.get("db_id") or 0),
        str(record.get("ID") or record.get("id") or ""),
        str(record.get("callid") or ""),
        record.get("state"),
        record.get("end_reason"),
        record.get("created"),
        record.get("confirmed"),
        float(record.get("ended") or time.time()),
        record.get("duration"),
        json.dumps(record, default=str),
    )


def open_store(
    url: str, hash_size: int, *, data_dir: str = ".", synchronous: str = "normal"
) -> DialogStore | None:
    """The store named by ``--db`` (None for ``none``); raises DbError with a one-line reason."""
    try:
        path = parse_db_url(url, data_dir)
    except ValueError as exc:
        raise DbError(str(exc)) from None
    if path is None:
        return None
    return SqliteStore(path, hash_size, synchronous)
