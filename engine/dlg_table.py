"""The dialog hash table: buckets, ids and lookups (OpenSIPS ``dlg_hash.c``).

A dialog lives in bucket ``h_entry`` (a hash of its Call-ID) under a per-bucket ``h_id``, so its
``ID`` and ``db_id`` print exactly as OpenSIPS prints them.  Listing walks buckets in ascending
order and each bucket in insertion order, as OpenSIPS does.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator

from .dialog import Dialog, DlgState, parse_reverse_hex


def callid_hash(callid: str, size: int) -> int:
    """Bucket of a Call-ID; stable across processes (a restored dialog keeps its bucket)."""
    return zlib.crc32(callid.encode("utf-8", "surrogateescape")) & (size - 1)


class DialogTable:
    """Dialogs by (h_entry, h_id) and by Call-ID."""

    def __init__(self, hash_size: int = 4096, rng: random.Random | None = None) -> None:
        if hash_size <= 0 or hash_size & (hash_size - 1):
            raise ValueError("hash_size must be a power of two")
        self.hash_size = hash_size
        self._buckets: list[dict[int, Dialog] | None] = [None] * hash_size
        rng = rng or random.Random()
        # OpenSIPS seeds each bucket's id counter at random so ids do not repeat across restarts.
        self._next_id = [rng.randrange(1, 1 << 31) for _ in range(hash_size)]
        self._by_callid: dict[str, list[Dialog]] = {}
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def new_ids(self, callid: str) -> tuple[int, int]:
        """Allocate (h_entry, h_id) for a new dialog with this Call-ID."""
        h_entry = callid_hash(callid, self.hash_size)
        h_id = self._next_id[h_entry]
        self._next_id[h_entry] = (h_id + 1) & 0xFFFFFFFF or 1
        return h_entry, h_id

    def add(self, dlg: Dialog) -> None:
        bucket = self._buckets[dlg.h_entry]
        if bucket is None:
            bucket = self._buckets[dlg.h_entry] = {}
        bucket[dlg.h_id] = dlg
        # Keep the counter ahead of restored ids so new ones never collide.
        if dlg.h_id >= self._next_id[dlg.h_entry]:
            self._next_id[dlg.h_entry] = (dlg.h_id + 1) & 0xFFFFFFFF or 1
        self._by_callid.setdefault(dlg.callid, []).append(dlg)
        self.count += 1

    def remove(self, dlg: Dialog) -> None:
        bucket = self._buckets[dlg.h_entry]
        if bucket is None or bucket.get(dlg.h_id) is not dlg:
            return
        del bucket[dlg.h_id]
        same = self._by_callid.get(dlg.callid)
        if same is not None:
            same.remove(dlg)
            if not same:
                del self._by_callid[dlg.callid]
        self.count -= 1

    def __iter__(self) -> Iterator[Dialog]:
        """Every dialog, in OpenSIPS listing order (bucket ascending, then insertion)."""
        for bucket in self._buckets:
            if bucket:
                yield from list(bucket.values())

    def holds(self, h_entry: int, h_id: int) -> bool:
        """Whether these ids are in the table (deleted dialogs included)."""
        bucket = self._buckets[h_entry] if 0 <= h_entry < self.hash_size else None
        return bucket is not None and h_id in bucket

    def get(self, h_entry: int, h_id: int) -> Dialog | None:
        """By ids; deleted dialogs are not found (as OpenSIPS's lookup_dlg)."""
        if not 0 <= h_entry < self.hash_size:
            return None
        bucket = self._buckets[h_entry]
        dlg = bucket.get(h_id) if bucket else None
        if dlg is None or dlg.state is DlgState.DELETED:
            return None
        return dlg

    def get_by_did(self, did: str) -> Dialog | None:
        """By the dlg_list ``ID`` (reversed-hex ``e.i``); None when malformed or unknown."""
        entry_text, dot, id_text = did.partition(".")
        if not dot:
            return None
        h_entry = parse_reverse_hex(entry_text)
        h_id = parse_reverse_hex(id_text)
        if h_entry is None or h_id is None:
            return None
        return self.get(h_entry, h_id)

    def get_by_callid(
        self, callid: str, from_tag: str | None = None, *, include_deleted: bool = False
    ) -> Dialog | None:
        """First dialog with this Call-ID (and caller tag, if given), skipping deleted ones."""
        for dlg in self._by_callid.get(callid, ()):
            if from_tag is not None and dlg.caller_tag != from_tag:
                continue
            if dlg.state is DlgState.DELETED and not include_deleted:
                continue
            return dlg
        return None

    def by_callid(self, callid: str) -> list[Dialog]:
        """All dialogs sharing a Call-ID (spirals, forks), deleted ones included."""
        return self._by_callid.get(callid, [])

    def lookup(self, dialog_id: str) -> Dialog | None:
        """dlg_end_dlg's lookup: the reversed-hex ID first, then the id taken as a Call-ID."""
        return self.get_by_did(dialog_id) or self.get_by_callid(dialog_id)
