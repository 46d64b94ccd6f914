"""The Redis store: dialogs and ended-call records in a Redis server (``--db redis://...``).

The same :class:`DialogStore` interface as SQLite, for sites that run Redis already, for
containers with no durable disk, and as the ground the cluster is built on.  Everything a node
writes lives under its own prefix, ``sipdlg:<node_id>:``:

* ``dialogs``: a hash, db_id → the dialog's row (:func:`dialog_row`, JSON columns encoded, as
  a JSON array in ``DIALOG_COLUMNS`` order);
* ``states``: a hash, db_id → ``"state updated"`` (the ACK's one-column updates);
  ``load`` keeps the higher state of the two, as SQLite's ``max(state, ?)`` does;
* ``ended`` (sorted set: record id by end time), ``ended:records`` (hash: id → JSON record)
  and ``ended:callid:<Call-ID>`` (set of ids): the ended-call records;
* ``meta``: ``hash_size``, which the IDs were made with (a node started with another one
  refuses the data, as with SQLite).

Each group commit is one ``MULTI``/``EXEC`` pipeline: one round trip, all or nothing.  The
commits run on the persistence's writer thread (the event loop never waits on Redis); what
Redis's own persistence (``appendonly``, ``appendfsync``) means for durability is in
docs/persistence.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import redis

from engine.dlg_db import DIALOG_COLUMNS, STATE_ROW_LEN, ChangeSet, DbError

from .base import DialogStore
from .sqlite import encode_row

#: Seconds a command may take before the store reports the server as unreachable.
TIMEOUT = 2.0
_STATE = DIALOG_COLUMNS.index("state")
_UPDATED = DIALOG_COLUMNS.index("updated")


def is_redis_url(url: str) -> bool:
    return url.strip().lower().startswith(("redis://", "rediss://", "unix://"))


class RedisStore(DialogStore):
    def __init__(self, url: str, hash_size: int, node_id: str = "1") -> None:
        parts = urlsplit(url)
        self.where = f"{parts.scheme}://{parts.hostname or ''}:{parts.port or 6379}{parts.path}"
        self.prefix = f"sipdlg:{node_id}:"
        try:
            self.client: redis.Redis | None = redis.Redis.from_url(
                url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, decode_responses=True
            )
            self.client.ping()
            self._check_hash_size(hash_size)
        except redis.RedisError as exc:
            raise DbError(f"cannot use {self.where}: {exc}") from None
        except ValueError as exc:
            raise DbError(f"--db: {url!r}: {exc}") from None

    def _key(self, name: str) -> str:
        return self.prefix + name

    def _check_hash_size(self, hash_size: int) -> None:
        assert self.client is not None
        meta = self._key("meta")
        self.client.hsetnx(meta, "hash_size", hash_size)
        stored = int(self.client.hget(meta, "hash_size") or hash_size)
        if stored != hash_size:
            raise DbError(
                f"{self.where} ({self.prefix}*) holds dialogs made with hash_size {stored}; "
                f"this server runs {hash_size}: every ID would change meaning"
            )

    def _conn(self) -> redis.Redis:
        if self.client is None:
            raise DbError("database is closed")
        return self.client

    def write_batches(self, batches: Sequence[ChangeSet], *, replace_all: bool = False) -> None:
        pipe = self._conn().pipeline(transaction=True)
        dialogs, states = self._key("dialogs"), self._key("states")
        if replace_all:
            pipe.delete(dialogs, states)
        for upserts, deletes, ended in batches:
            for row in upserts:
                if len(row) == STATE_ROW_LEN:
                    state, updated, db_id = row
                    pipe.hset(states, str(db_id), f"{state} {updated}")
                else:
                    pipe.hset(dialogs, str(row[0]), json.dumps(encode_row(row), default=str))
            if deletes:
                keys = [str(d) for d in deletes]
                pipe.hdel(dialogs, *keys)
                pipe.hdel(states, *keys)
            for record in ended:
                self._add_ended(pipe, record)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise DbError(f"writing {self.where} failed: {exc}") from None

    def _add_ended(self, pipe: Any, record: dict[str, Any]) -> None:
        ended = float(record.get("ended") or 0.0)
        rid = f"{record.get('db_id')}:{ended:.6f}"
        pipe.zadd(self._key("ended"), {rid: ended})
        pipe.hset(self._key("ended:records"), rid, json.dumps(record, default=str))
        pipe.sadd(self._key(f"ended:callid:{record.get('callid', '')}"), rid)

    def load(self) -> list[tuple[Any, ...]]:
        conn = self._conn()
        try:
            rows = conn.hgetall(self._key("dialogs"))
            states = conn.hgetall(self._key("states"))
        except redis.RedisError as exc:
            raise DbError(f"reading {self.where} failed: {exc}") from None
        out = []
        for db_id, raw in rows.items():
            row = json.loads(raw)
            update = states.get(db_id)
            if update is not None:
                state, updated = update.split()
                row[_STATE] = max(row[_STATE], int(state))
                row[_UPDATED] = max(row[_UPDATED], float(updated))
            out.append(tuple(row))
        out.sort(key=lambda r: r[0])
        return out

    def prune_ended(self, before: float, limit: int | None = None) -> int:
        conn = self._conn()
        key = self._key("ended")
        try:
            found = (
                conn.zrangebyscore(key, "-inf", f"({before}")
                if limit is None
                else conn.zrangebyscore(key, "-inf", f"({before}", start=0, num=limit)
            )
            ids = [str(i) for i in found]
            if not ids:
                return 0
            records = conn.hmget(self._key("ended:records"), ids)
            pipe = conn.pipeline(transaction=True)
            pipe.zrem(key, *ids)
            pipe.hdel(self._key("ended:records"), *ids)
            for rid, raw in zip(ids, records, strict=True):
                if raw is not None:
                    callid = json.loads(raw).get("callid", "")
                    pipe.srem(self._key(f"ended:callid:{callid}"), rid)
            pipe.execute()
            return len(ids)
        except redis.RedisError as exc:
            raise DbError(f"pruning {self.where} failed: {exc}") from None

    def ended(
        self, callid: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        if self.client is None:
            return []
        conn = self.client
        try:
            if callid is not None:
                ids = [str(i) for i in conn.smembers(self._key(f"ended:callid:{callid}"))]
            else:
                ids = [
                    str(i) for i in conn.zrevrange(self._key("ended"), offset, offset + limit - 1)
                ]
            raws = conn.hmget(self._key("ended:records"), ids) if ids else []
        except redis.RedisError as exc:
            raise DbError(f"reading {self.where} failed: {exc}") from None
        records = [json.loads(r) for r in raws if r is not None]
        if callid is not None:
            records.sort(key=lambda r: float(r.get("ended") or 0.0), reverse=True)
            records = records[offset : offset + limit]
        return records

    def count(self, table: str = "dialogs") -> int:
        conn = self._conn()
        if table == "dialogs":
            return int(conn.hlen(self._key("dialogs")))
        return int(conn.zcard(self._key("ended")))

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()
