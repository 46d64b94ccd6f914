"""The storage interface every dialog store implements (SQLite today; Redis next)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from engine.dlg_db import ChangeSet


class DialogStore(abc.ABC):
    """Where dialogs and ended-call records are kept.  One writer (this process)."""

    #: Printable location (for logs and errors).
    where: str = ""

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
        self.write_batches([(upserts, deletes, ended)], replace_all=replace_all)

    @abc.abstractmethod
    def write_batches(self, batches: Sequence[ChangeSet], *, replace_all: bool = False) -> None:
        """Several change sets, applied in order, in one transaction (group commit)."""

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

    def problem(self) -> str | None:
        """Why the database cannot be used now (``GET /health``), or None."""
        return None
