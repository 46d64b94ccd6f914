"""The SQLite store: the default backend, one file in WAL mode locked against a second server.

Versioned schema (``meta.schema_version``, migrations applied in order at open); the file
records the ``hash_size`` the IDs were made with, and a server started with a different one
refuses it, since every ``ID``/``db_id`` would change meaning.  :func:`apply_changes` is the
one writer of change sets, used by the store's own connection and by the writer process
(``app/store/writer.py``).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from engine.dlg_db import DIALOG_COLUMNS, STATE_ROW_LEN, ChangeSet, DbError

from .base import DialogStore

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


SQLITE_MAGIC = b"SQLite format 3\x00"
SYNCHRONOUS = ("off", "normal", "full")


def parse_db_url(url: str, data_dir: str = ".") -> str | None:
    """``--db`` value to a SQLite file path (a ``redis://`` URL as it is); None for ``none``.

    ``sqlite:///rel/path.db`` and ``sqlite:////abs/path.db`` (SQLAlchemy style), ``sqlite:PATH``
    and a bare path are accepted; a relative path is taken under ``data_dir``.
    """
    text = url.strip()
    if text.lower() in ("none", "", "memory", "off"):
        return None
    if text.lower().startswith(("redis://", "rediss://")):
        return text  # not a file: app/store/redis_store.py
    if text.lower().startswith("sqlite:"):
        rest = text[len("sqlite:") :]
        if rest.startswith("///"):
            rest = rest[3:]
        elif rest.startswith("//"):
            raise ValueError(f"--db: {url!r}: use sqlite:///relative.db or sqlite:////abs.db")
        text = rest
    elif "://" in text:
        raise ValueError(
            f"--db: unsupported database {url!r} (sqlite:///PATH, redis://HOST:PORT/DB or none)"
        )
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

    def write_batches(self, batches: Sequence[ChangeSet], *, replace_all: bool = False) -> None:
        # One statement of each kind for the whole group: a dialog is upserted any number of
        # times and deleted at most once, at its end, so all upserts (in order), then all
        # deletes, leave the same rows as the change sets applied one by one.
        if len(batches) > 1:
            upserts = [row for b in batches for row in b[0]]
            deletes = [db_id for b in batches for db_id in b[1]]
            ended = [rec for b in batches for rec in b[2]]
            batches = [(upserts, deletes, ended)]
        self._transaction(batches, replace_all)

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

    def problem(self) -> str | None:
        """Closed, or its file removed under it (every write would then be lost)."""
        if self.db is None:
            return f"database {self.path} is closed"
        if not os.path.exists(self.path):
            return f"database {self.path} was removed"
        return None

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
    """The SQLite store named by ``--db`` (None for ``none``); raises DbError with a one-line
    reason.  (A ``redis://`` URL is opened by ``persistence.open_persistence``.)"""
    try:
        path = parse_db_url(url, data_dir)
    except ValueError as exc:
        raise DbError(str(exc)) from None
    if path is None:
        return None
    return SqliteStore(path, hash_size, synchronous)
