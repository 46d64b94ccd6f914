"""The MI command handlers: what each command does once its params matched a recipe.

Handlers receive the service and the validated pydantic params (see ``schemas.mi``), and return
a JSON-able value, a :class:`RawResult` (pre-serialized JSON, for big listings) or raise
:class:`MiError` for a command-level error such as 404 "No such dialog".
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import platform
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from pydantic import BaseModel

from engine.dialog import Dialog
from engine.dispatcher import DestinationSet, DsState
from engine.dlg_records import RecordRing
from engine.dlg_table import DialogTable
from engine.stats import DIALOG_STATS, Stats
from schemas.mi import COMMANDS, ParamsError

from .format import dialog_json, to_wire

log = logging.getLogger("sipdlg.mi")

#: A listing checks the clock every SLICE dialogs and yields to the event loop once it has
#: held it for YIELD_AFTER seconds, so SIP messages wait at most a few milliseconds.
SLICE = 50
YIELD_AFTER = 0.002


class DialogView(Protocol):
    """The engine's tables as the MI reads them."""

    @property
    def dialogs(self) -> DialogTable: ...

    @property
    def stats(self) -> Stats: ...

    @property
    def dispatcher(self) -> DestinationSet | None: ...


class DialogOps(Protocol):
    """Everything the MI may read from or do to the running server (``app/sip/service.py``); the
    handlers use nothing else, and ``tests/helpers/mi_fake.py`` stands in for it."""

    started_at: float
    version: str
    #: The build's revision for ``version revision``, if known.
    revision: str | None
    #: The newest ended-call records (``dlg_list_ended``).
    records: RecordRing
    #: MI calls by (method, outcome), for ``/metrics``.
    mi_requests: Counter[tuple[str, str]]

    @property
    def engine(self) -> DialogView: ...

    @property
    def has_db(self) -> bool:
        """Whether dialogs are stored (else ``dlg_db_sync``/``dlg_restore_db`` refuse)."""
        ...

    def end_dialog(
        self, dlg: Dialog, reason: str = ..., extra_headers: str = ...
    ) -> bool | Awaitable[bool]: ...

    def set_timeout(self, dlg: Dialog, seconds: int) -> bool:
        """Re-arm a live dialog's lifetime; False if it ended meanwhile."""
        ...

    def db_sync(self) -> None:
        """Replace the stored dialogs by the ones in memory; raises on failure."""
        ...

    def restore_db(self) -> int:
        """Load the stored dialogs missing from memory; how many came.  Raises on failure."""
        ...

    def set_destination_state(self, address: str, state: str) -> bool:
        """Set a next hop's state (``DsState``); False if no destination has that address."""
        ...

    def blocked_sources(self) -> list[str]:
        """The source IPs over the request rate limit now (engine/pike.py)."""
        ...


class MiError(Exception):
    """A command-level error: OpenSIPS's small positive codes (404, 500, ...)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class RawResult:
    """A ``result`` already serialized to UTF-8 JSON, in pieces, written as is."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __len__(self) -> int:
        return sum(len(c) for c in self.chunks)


Handler = Callable[[DialogOps, BaseModel], Awaitable[Any]]
HANDLERS: dict[str, Handler] = {}


def handler(name: str) -> Callable[[Handler], Handler]:
    """Register the handler of a command declared in ``schemas.mi.COMMANDS``."""

    def register(fn: Handler) -> Handler:
        assert name in COMMANDS, name
        HANDLERS[name] = fn
        return fn

    return register


def _get(params: BaseModel, name: str) -> Any:
    return getattr(params, name, None)


# --------------------------------------------------------------------------------------------
# dlg_list / dlg_list_ctx
# --------------------------------------------------------------------------------------------


async def _serialize(dialogs: Iterable[Dialog], ctx: bool, head: str) -> RawResult:
    """``head`` + the dialogs as a JSON array + ``]}``, yielding every SLICE dialogs."""
    chunks: list[bytes] = []
    dates: dict[int, str] = {}
    part: list[str] = [head, "["]
    n = 0
    clock = time.perf_counter
    held_since = clock()
    for dlg in dialogs:
        if n:
            part.append(",")
        part.append(dialog_json(dlg, dates, ctx))
        n += 1
        if n % SLICE == 0 and clock() - held_since > YIELD_AFTER:
            chunks.append(to_wire("".join(part)))
            part = []
            await asyncio.sleep(0)
            held_since = clock()
    part.append("]}")
    chunks.append(to_wire("".join(part)))
    return RawResult(chunks)


async def _skip(it: Iterable[Dialog], count: int) -> Iterable[Dialog]:
    """Advance past ``count`` dialogs, yielding now and then on a huge index."""
    iterator = iter(it)
    for n in range(count):
        if next(iterator, None) is None:
            return iterator
        if n % 20000 == 19999:
            await asyncio.sleep(0)
    return iterator


def _take(it: Iterable[Dialog], count: int) -> Iterable[Dialog]:
    for n, dlg in enumerate(it):
        if n >= count:
            return
        yield dlg


async def _list(service: DialogOps, params: BaseModel, ctx: bool) -> Any:
    table = service.engine.dialogs
    callid = _get(params, "callid")
    if callid is not None:
        dlg = table.get_by_callid(callid, _get(params, "from_tag"))
        if dlg is None:
            raise MiError(404, "No such dialog")
        return RawResult([to_wire('{"Dialog":' + dialog_json(dlg, {}, ctx) + "}")])
    index = _get(params, "index")
    if index is None:
        return await _serialize(table, ctx, '{"Dialogs":')
    # OpenSIPS takes index/counter as unsigned ints: -1 is a huge index (empty page), counter
    # 0 turns pagination off (full list, no "count"), a negative counter is "all the rest".
    # A number beyond 32 bits does not wrap (2**70 is not 0): it is as huge as -1.
    idx = _unsigned(index)
    cnt = _unsigned(_get(params, "counter"))
    if cnt == 0:
        return await _serialize(table, ctx, '{"Dialogs":')
    total = len(table)
    if idx >= total:
        return RawResult([to_wire(f'{{"count":{total},"Dialogs":[]}}')])
    rest = await _skip(table, idx)
    return await _serialize(_take(rest, cnt), ctx, f'{{"count":{total},"Dialogs":')


def _unsigned(value: int) -> int:
    """OpenSIPS's unsigned 32-bit reading of index/counter: negatives wrap, anything past
    the range is the largest value."""
    if -(1 << 31) <= value < (1 << 32):
        return value & 0xFFFFFFFF
    return 0xFFFFFFFF


@handler("dlg_list")
async def dlg_list(service: DialogOps, params: BaseModel) -> Any:
    """All dialogs, one by Call-ID (+ From-tag), or a page."""
    return await _list(service, params, ctx=False)


@handler("dlg_list_ctx")
async def dlg_list_ctx(service: DialogOps, params: BaseModel) -> Any:
    """As dlg_list plus ``context`` (sipdlg keeps no dialog values or profiles: ``{}``)."""
    return await _list(service, params, ctx=True)


# --------------------------------------------------------------------------------------------
# dlg_end_dlg
# --------------------------------------------------------------------------------------------


@handler("dlg_end_dlg")
async def dlg_end_dlg(service: DialogOps, params: BaseModel) -> Any:
    """End a dialog by ID or Call-ID: BYEs (confirmed) or CANCEL (early)."""
    dialog_id: str = _get(params, "dialog_id")
    extra: str = _get(params, "extra_hdrs") or ""
    dlg = service.engine.dialogs.lookup(dialog_id)
    if dlg is None:
        raise MiError(404, "Requested Dialog not found")
    try:
        outcome = service.end_dialog(dlg, "MI Termination", extra)
        if inspect.isawaitable(outcome):
            outcome = await outcome
    except Exception:
        log.exception("dlg_end_dlg %s: ending the dialog failed", dlg.did)
        outcome = False
    if not outcome:
        raise MiError(500, "Operation failed")
    log.info("dlg_end_dlg: ended %s (Call-ID %s) by MI", dlg.did, dlg.callid)
    return "OK"


# --------------------------------------------------------------------------------------------
# dlg_db_sync, dlg_restore_db (persistence: app/store/persistence.py)
# --------------------------------------------------------------------------------------------


@handler("dlg_db_sync")
async def dlg_db_sync(service: DialogOps, params: BaseModel) -> Any:
    """Replace the stored dialogs by the ones in memory (OpenSIPS mi_sync_db_dlg)."""
    if not service.has_db:
        raise MiError(400, "Cannot sync in no-db mode")
    try:
        service.db_sync()
    except Exception as exc:
        log.error("dlg_db_sync: %s", exc)
        raise MiError(400, "Sync mem with DB failed") from None
    return "OK"


@handler("dlg_restore_db")
async def dlg_restore_db(service: DialogOps, params: BaseModel) -> Any:
    """Load stored dialogs that are not in memory (OpenSIPS mi_restore_dlg_db)."""
    if not service.has_db:
        raise MiError(400, "Cannot restore db in no-db mode!")
    try:
        service.restore_db()
    except Exception as exc:
        log.error("dlg_restore_db: %s", exc)
        raise MiError(400, "Restore dlg DB failed!") from None
    return "OK"


# --------------------------------------------------------------------------------------------
# dlg_set_timeout, dlg_list_ended (beyond OpenSIPS: docs/lifecycle.md)
# --------------------------------------------------------------------------------------------


@handler("dlg_set_timeout")
async def dlg_set_timeout(service: DialogOps, params: BaseModel) -> Any:
    """Re-arm a live dialog's lifetime: it now ends ``timeout`` seconds from now."""
    timeout: int = _get(params, "timeout")
    if timeout <= 0:
        raise MiError(400, "Bad timeout")
    dlg = service.engine.dialogs.lookup(_get(params, "dialog_id"))
    if dlg is None:
        raise MiError(404, "Requested Dialog not found")
    if not service.set_timeout(dlg, timeout):
        raise MiError(404, "Requested Dialog not found")
    return "OK"


@handler("dlg_list_ended")
async def dlg_list_ended(service: DialogOps, params: BaseModel) -> Any:
    """Ended-call records, newest first: all, those of one Call-ID, or a page."""
    ring = service.records
    callid = _get(params, "callid")
    if callid is not None:
        found = ring.by_callid(callid)
        return {"count": len(found), "Dialogs": found}
    index = _get(params, "index")
    if index is None:
        records = list(ring)
        return {"count": len(records), "Dialogs": records}
    return {"count": len(ring), "Dialogs": ring.page(index, _get(params, "counter"))}


# --------------------------------------------------------------------------------------------
# ds_list, ds_set_state (OpenSIPS's dispatcher: the next hops, docs/network.md)
# --------------------------------------------------------------------------------------------

DS_STATES = {"a": DsState.ACTIVE, "i": DsState.INACTIVE, "p": DsState.PROBING}


@handler("ds_list")
async def ds_list(service: DialogOps, params: BaseModel) -> Any:
    """The next hops, as OpenSIPS lists its partitions and sets."""
    partition: dict[str, Any] = {"name": "default"}
    dispatcher = service.engine.dispatcher
    if dispatcher is not None:
        full = _get(params, "full") is not None
        dests = []
        for d in dispatcher.destinations:
            item: dict[str, Any] = {
                "URI": d.uri,
                "state": d.state,
                "first_hit_counter": d.first_hit_counter,
            }
            if full:
                item["weight"] = d.weight
                item["priority"] = d.priority
            if d.reason:
                item["reason"] = d.reason
            dests.append(item)
        partition["SETS"] = [{"id": dispatcher.id, "Destinations": dests}]
    return {"PARTITIONS": [partition]}


@handler("ds_set_state")
async def ds_set_state(service: DialogOps, params: BaseModel) -> Any:
    """Take a next hop out of rotation (i), put it back (a) or have it probed (p)."""
    state = DS_STATES.get(str(_get(params, "state")).lower()[:1])
    if state is None:
        raise MiError(400, "Bad state value")
    if _get(params, "group") != 1:
        raise MiError(404, "Destination not found")
    if not service.set_destination_state(_get(params, "address"), state):
        raise MiError(404, "Destination not found")
    return "OK"


# --------------------------------------------------------------------------------------------
# pike_list (flood protection: engine/pike.py, docs/flood.md)
# --------------------------------------------------------------------------------------------


@handler("pike_list")
async def pike_list(service: DialogOps, params: BaseModel) -> Any:
    """The blocked source addresses, in OpenSIPS 3.x's shape."""
    return {"IPs": service.blocked_sources()}


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def stat_groups(stats: Stats) -> dict[str, dict[str, tuple[int, bool]]]:
    """group -> name -> (value, incremental); dialog stats in OpenSIPS order."""
    values = stats.dialog_stats()
    dialog = {name: (values[name], resettable) for name, resettable in DIALOG_STATS}
    core = {name: (value, True) for name, value in stats.core_stats().items()}
    return {"core": core, "dialog": dialog}


def select_stats(stats: Stats, names: list[str]) -> dict[str, tuple[int, bool]]:
    """OpenSIPS's selection: 'all', 'group:', or a bare name; 'group:name' matches nothing."""
    groups = stat_groups(stats)
    out: dict[str, tuple[int, bool]] = {}
    for name in names:
        if name == "all":
            for group, members in groups.items():
                for stat, v in members.items():
                    out[f"{group}:{stat}"] = v
        elif name.endswith(":"):
            for stat, v in groups.get(name[:-1], {}).items():
                out[f"{name}{stat}"] = v
        elif ":" not in name:
            for group, members in groups.items():
                if name in members:
                    out[f"{group}:{name}"] = members[name]
        # "group:name" is not a name OpenSIPS 3.6 resolves (sample 75): nothing.
    return out


@handler("get_statistics")
async def get_statistics(service: DialogOps, params: BaseModel) -> Any:
    """Flat ``{"group:name": value}``; unknown names are skipped (``{}`` if none match)."""
    chosen = select_stats(service.engine.stats, _get(params, "statistics"))
    return {key: value for key, (value, _) in chosen.items()}


@handler("list_statistics")
async def list_statistics(service: DialogOps, params: BaseModel) -> Any:
    names = _get(params, "statistics") or ["all"]
    chosen = select_stats(service.engine.stats, names)
    return {k: "incremental" if inc else "non-incremental" for k, (_, inc) in chosen.items()}


@handler("reset_statistics")
async def reset_statistics(service: DialogOps, params: BaseModel) -> Any:
    """Reset the named statistics; non-incremental ones are found but left alone."""
    stats = service.engine.stats
    found = False
    for name in _get(params, "statistics"):
        bare = name.partition(":")[2] if ":" in name and not name.endswith(":") else name
        for key in select_stats(stats, [bare]):
            found = True
            stats.reset(key.partition(":")[2])
    if not found:
        raise MiError(404, "Statistics Not Found")
    return "OK"


@handler("reset_all_statistics")
async def reset_all_statistics(service: DialogOps, params: BaseModel) -> Any:
    stats = service.engine.stats
    for key in select_stats(stats, ["all"]):
        stats.reset(key.partition(":")[2])
    return "OK"


# --------------------------------------------------------------------------------------------
# core
# --------------------------------------------------------------------------------------------


def server_signature(version: str) -> str:
    """The Server/User-Agent text, OpenSIPS style: ``sipdlg (0.1.0 (x86_64/linux))``."""
    return f"sipdlg ({version} ({platform.machine()}/{platform.system().lower()}))"


@handler("uptime")
async def uptime(service: DialogOps, params: BaseModel) -> Any:
    now = time.time()
    return {
        "Now": time.ctime(now),
        "Up since": time.ctime(service.started_at),
        "Up time": f"{max(0, int(now - service.started_at))} [sec]",
    }


@handler("version")
async def version(service: DialogOps, params: BaseModel) -> Any:
    out = {"Server": server_signature(service.version)}
    if _get(params, "revision") is not None:
        out["git"] = service.revision or "unknown"
    return out


@handler("ps")
async def ps(service: DialogOps, params: BaseModel) -> Any:
    """sipdlg is one process: SIP, timers and the MI share its event loop."""
    return {"Processes": [{"ID": 0, "PID": os.getpid(), "Type": "sipdlg (SIP, timers, MI)"}]}


#: OpenSIPS's log levels (L_ALERT -3 ... L_DBG 4) and Python's.
OPENSIPS_LEVELS = {
    -3: logging.CRITICAL,
    -2: logging.CRITICAL,
    -1: logging.ERROR,
    0: logging.ERROR,
    1: logging.WARNING,
    2: logging.INFO,
    3: logging.INFO,
    4: logging.DEBUG,
}
PYTHON_LEVELS = {logging.CRITICAL: -2, logging.ERROR: -1, logging.WARNING: 1, logging.INFO: 3}


@handler("log_level")
async def log_level(service: DialogOps, params: BaseModel) -> Any:
    """The level of sipdlg's one process, or set it, at run time (no restart)."""
    root = logging.getLogger()
    level = _get(params, "level")
    if level is None:
        current = PYTHON_LEVELS.get(root.getEffectiveLevel(), 4)
        return {"Processes": [{"PID": os.getpid(), "Log level": current, "Type": "sipdlg"}]}
    pid = _get(params, "pid")
    if pid is not None and pid != os.getpid():
        raise ParamsError("Bad PID")
    log.warning("log level set to %d by the MI", level)
    root.setLevel(OPENSIPS_LEVELS[min(max(level, -3), 4)])
    return {"Log level": level} if pid is not None else {"New global log level": level}


@handler("which")
async def which(service: DialogOps, params: BaseModel) -> Any:
    command = _get(params, "command")
    if command is None:
        return list(COMMANDS)
    cmd = COMMANDS.get(command)
    if cmd is None:
        raise MiError(404, "unknown MI command")
    return cmd.which()


@handler("help")
async def help_(service: DialogOps, params: BaseModel) -> Any:
    name = _get(params, "mi_cmd")
    if name is None:
        return "Usage: help mi_cmd - returns information about 'mi_cmd'"
    cmd = COMMANDS.get(name)
    if cmd is None:
        raise MiError(404, "unknown MI command")
    return {"Help": cmd.help or "not available for this command", "Exported by": cmd.module}


missing = set(COMMANDS) - set(HANDLERS)
assert not missing, f"MI commands without a handler: {missing}"
