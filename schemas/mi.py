"""The MI's commands as data: parameter recipes, parameter types and result shapes.

This module is the single source of truth for the management interface.  The JSON-RPC server
(``app/mi/http.py``) matches every call against the recipes declared here and validates the
parameters with the pydantic models built from them; ``which`` answers from the same recipes;
``mi_json_schema()`` publishes it all as a JSON Schema.  Matching follows OpenSIPS 3.x
(``mi/mi.c``), with its exact ``data`` texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)
from pydantic_core import PydanticCustomError

# --------------------------------------------------------------------------------------------
# JSON-RPC error texts (OpenSIPS mi.c)
# --------------------------------------------------------------------------------------------

PARSE_ERROR = (-32700, "Parse error")
INVALID_REQUEST = (-32600, "Invalid Request")
METHOD_NOT_FOUND = (-32601, "Method not found")
INVALID_PARAMS = (-32602, "Invalid params")
SERVER_ERROR = (-32000, "Server error")

ERR_NAMED_ONLY = "Command only supports named parameters"
ERR_COUNT = "Too few or too many parameters"
ERR_AMBIGUOUS = "Ambiguous call, use named parameters instead"
ERR_NAMES = "Named parameters do not match"


class ParamsError(Exception):
    """A -32602 "Invalid params" failure; ``data`` is OpenSIPS's exact explanation."""

    def __init__(self, data: str) -> None:
        super().__init__(data)
        self.data = data


# --------------------------------------------------------------------------------------------
# Parameter types, with OpenSIPS's coercions
# --------------------------------------------------------------------------------------------


def _mi_str(value: Any) -> str:
    """String params take JSON strings or numbers; a number becomes its decimal text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("mi_bad_type", "Bad type")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _mi_int(value: Any) -> int:
    """Int params take JSON numbers (truncated) or numeric strings (optional sign, digits)."""
    if isinstance(value, bool):
        raise PydanticCustomError("mi_bad_type", "Bad type")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise PydanticCustomError("mi_bad_type", "Bad type")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        body = text[1:] if text[:1] in "+-" else text
        if body.isascii() and body.isdigit():
            return int(text)
    raise PydanticCustomError("mi_bad_type", "Bad type")


def _mi_str_array(value: Any) -> list[str]:
    """Array params: a non-empty JSON array of strings."""
    if not isinstance(value, list):
        raise PydanticCustomError("mi_bad_type", "Bad type")
    if not value:
        raise PydanticCustomError("mi_empty_array", "Empty array")
    if not all(isinstance(item, str) for item in value):
        raise PydanticCustomError("mi_bad_item", "Bad type for array item")
    return list(value)


MiStr = Annotated[str, BeforeValidator(_mi_str)]
MiInt = Annotated[int, BeforeValidator(_mi_int)]
MiStrArray = Annotated[list[str], BeforeValidator(_mi_str_array)]

ParamKind = Literal["string", "int", "array"]
_KIND_TYPE: dict[str, Any] = {"string": MiStr, "int": MiInt, "array": MiStrArray}
#: JSON Schema of what a client may send for each kind (coercions included).
_KIND_JSON: dict[str, dict[str, Any]] = {
    "string": {"type": ["string", "number"]},
    "int": {
        "anyOf": [
            {"type": "integer"},
            {"type": "number"},
            {"type": "string", "pattern": r"^\s*[+-]?[0-9]+\s*$"},
        ]
    },
    "array": {"type": "array", "items": {"type": "string"}, "minItems": 1},
}


@dataclass(frozen=True, slots=True)
class Param:
    """One named MI parameter."""

    name: str
    kind: ParamKind
    description: str


class Recipe:
    """One accepted parameter list of a command, with its validating pydantic model."""

    def __init__(self, command: str, params: Sequence[Param]) -> None:
        self.params = tuple(params)
        self.names = tuple(p.name for p in params)
        fields: dict[str, Any] = {
            p.name: (_KIND_TYPE[p.kind], Field(description=p.description)) for p in params
        }
        title = command + ("__" + "__".join(self.names) if self.names else "__none")
        self.model: type[BaseModel] = create_model(  # type: ignore[call-overload]
            title, __config__=ConfigDict(extra="forbid", frozen=True), **fields
        )

    def validate(self, values: dict[str, Any]) -> BaseModel:
        """Bind values; the first failing parameter in recipe order gives the error text."""
        try:
            return self.model.model_validate(values)
        except ValidationError as exc:
            errors = exc.errors()
            by_name = {str(e["loc"][0]): e for e in errors if e["loc"]}
            for name in self.names:
                err = by_name.get(name)
                if err is None:
                    continue
                if err["type"] == "mi_empty_array":
                    raise ParamsError(f"Empty array in parameter '{name}'") from None
                if err["type"] == "mi_bad_item":
                    raise ParamsError(f"Bad type for array item in parameter '{name}'") from None
                raise ParamsError(f"Bad type for parameter '{name}'") from None
            raise ParamsError(ERR_NAMES) from None


@dataclass(slots=True)
class Command:
    """An MI command: its recipes, flags, help and result model."""

    name: str
    module: str
    recipes: list[Recipe]
    result: Any
    description: str
    named_only: bool = False
    help: str | None = None
    errors: list[tuple[int, str]] = field(default_factory=list)

    def which(self) -> list[list[str]]:
        """The ``which command=X`` answer: one list of names per recipe."""
        return [list(r.names) for r in self.recipes]

    def match(self, params: list[Any] | dict[str, Any]) -> tuple[Recipe, BaseModel]:
        """Pick the recipe for these params as OpenSIPS does, then validate them.

        Raises ParamsError with OpenSIPS's ``data`` text when nothing fits.
        """
        if isinstance(params, list):
            if params and self.named_only:
                raise ParamsError(ERR_NAMED_ONLY)
            fits = [r for r in self.recipes if len(r.names) == len(params)]
            if not fits:
                raise ParamsError(ERR_COUNT)
            if len(fits) > 1:
                raise ParamsError(ERR_AMBIGUOUS)
            recipe = fits[0]
            values = dict(zip(recipe.names, params, strict=True))
        else:
            same_count = [r for r in self.recipes if len(r.names) == len(params)]
            if not same_count:
                raise ParamsError(ERR_COUNT)
            keys = set(params)
            named = [r for r in same_count if set(r.names) == keys]
            if not named:
                raise ParamsError(ERR_NAMES)
            recipe = named[0]
            values = dict(params)
        return recipe, recipe.validate(values)


# --------------------------------------------------------------------------------------------
# Result models (documentation + JSON Schema + test oracle; the hot path does not build them)
# --------------------------------------------------------------------------------------------

_STRICT = ConfigDict(extra="forbid")


class CalleeOut(BaseModel):
    """One callee leg of a dialog (OpenSIPS's ``CALLEES`` keys), in output order."""

    model_config = _STRICT
    callee_tag: str
    callee_contact: str = Field(description="'' until a 2xx or target refresh gives one")
    caller_cseq: str = Field(pattern=r"^[0-9]+$", description="decimal text")
    callee_route_set: str
    callee_bind_addr: str | None
    callee_sdp: str | None = Field(None, description="omitted when no SDP was seen")
    callee_sent_sdp: str | None = Field(None, description="omitted when no SDP was sent")


class DialogOut(BaseModel):
    """The per-dialog object of dlg_list (OpenSIPS), keys in output order."""

    model_config = _STRICT
    ID: str = Field(pattern=r"^[0-9a-f]+\.[0-9a-f]+$", description="reversed-hex h_entry.h_id")
    db_id: str = Field(pattern=r"^[0-9]+$", description="(h_entry << 32) + h_id, decimal text")
    state: int = Field(ge=1, le=5)
    user_flags: str
    timestart: int
    datestart: str | None = Field(None, description="local time; only when timestart != 0")
    timeout: int
    dateout: str | None = Field(None, description="local time; only when timeout != 0")
    callid: str
    from_uri: str
    to_uri: str
    caller_tag: str
    caller_contact: str
    callee_cseq: str = Field(pattern=r"^[0-9]+$")
    caller_route_set: str
    caller_bind_addr: str
    caller_sdp: str | None = Field(None, description="omitted when none")
    caller_sent_sdp: str | None = Field(None, description="omitted when none")
    CALLEES: list[CalleeOut]


class DialogCtxOut(DialogOut):
    """dlg_list_ctx's dialog object: the same plus ``context``."""

    context: dict[str, Any]


class DialogsOut(BaseModel):
    model_config = _STRICT
    Dialogs: list[DialogOut]


class DialogsPageOut(BaseModel):
    model_config = _STRICT
    count: int = Field(description="total dialogs in the table, not the page size")
    Dialogs: list[DialogOut]


class DialogOneOut(BaseModel):
    model_config = _STRICT
    Dialog: DialogOut


class DialogsCtxOut(BaseModel):
    model_config = _STRICT
    Dialogs: list[DialogCtxOut]


class DialogsCtxPageOut(BaseModel):
    model_config = _STRICT
    count: int
    Dialogs: list[DialogCtxOut]


class DialogCtxOneOut(BaseModel):
    model_config = _STRICT
    Dialog: DialogCtxOut


class EndedDialogOut(BaseModel):
    """An ended-call record (``engine.dlg_records.make_record``), keys in output order."""

    model_config = _STRICT
    ID: str = Field(pattern=r"^[0-9a-f]+\.[0-9a-f]+$")
    db_id: str = Field(pattern=r"^[0-9]+$")
    callid: str
    from_uri: str
    from_tag: str
    to_uri: str
    to_tag: str = Field(description="the answering (or last early) callee's tag, or ''")
    created: float = Field(description="Unix time the INVITE created the dialog")
    confirmed: int = Field(description="Unix time of the 2xx (timestart); 0 if never answered")
    ended: float = Field(description="Unix time the dialog reached state 5")
    duration: int = Field(ge=0, description="seconds from confirmed to ended; 0 if unanswered")
    state: int = Field(ge=1, le=5, description="final state (5)")
    end_reason: str | None = Field(
        description="$DLG_end_reason; null for failed calls and expiries without BYE"
    )
    bye_sent_by: Literal["caller", "callee", "engine"] | None = Field(
        description="who sent the BYE that ended the call; null when none did"
    )


class EndedDialogsOut(BaseModel):
    model_config = _STRICT
    count: int = Field(description="records matching (all records for index/counter)")
    Dialogs: list[EndedDialogOut] = Field(description="newest first")


class UptimeOut(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    Now: str
    up_since: str = Field(alias="Up since")
    up_time: str = Field(alias="Up time", pattern=r"^[0-9]+ \[sec\]$")


class VersionOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    Server: str


class ProcessOut(BaseModel):
    model_config = _STRICT
    ID: int
    PID: int
    Type: str


class PsOut(BaseModel):
    model_config = _STRICT
    Processes: list[ProcessOut]


class HelpOut(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    Help: str
    exported_by: str = Field(alias="Exported by")


class DestinationOut(BaseModel):
    """One next hop as OpenSIPS's ``ds_list`` prints it (``weight``/``priority`` with
    ``full``)."""

    model_config = _STRICT
    URI: str
    state: Literal["Active", "Probing", "Inactive"]
    first_hit_counter: int
    weight: int | None = None
    priority: int | None = None
    reason: str | None = Field(
        default=None, description="beyond OpenSIPS: why it went down (Probing only)"
    )


class DestinationSetOut(BaseModel):
    model_config = _STRICT
    id: int
    Destinations: list[DestinationOut]


class PartitionOut(BaseModel):
    model_config = _STRICT
    name: str
    SETS: list[DestinationSetOut] | None = None


class DsListOut(BaseModel):
    """OpenSIPS 3.x ``ds_list``: partitions, their sets, their destinations (sipdlg has one
    partition, ``default``, with set 1: the ``next_hop`` setting)."""

    model_config = _STRICT
    PARTITIONS: list[PartitionOut]


class PikeListOut(BaseModel):
    """OpenSIPS 3.x ``pike_list``: the blocked source addresses."""

    model_config = _STRICT
    IPs: list[str]


class LogLevelProcessOut(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    PID: int
    log_level: int = Field(alias="Log level")
    Type: str


class LogLevelOut(BaseModel):
    """No params: each process's level; ``level``: ``New global log level``; with ``pid``:
    ``Log level`` (OpenSIPS 3.x)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    Processes: list[LogLevelProcessOut] | None = None
    new_global: int | None = Field(default=None, alias="New global log level")
    log_level: int | None = Field(default=None, alias="Log level")


OkOut = Literal["OK"]
StatsOut = dict[str, int]
StatKindsOut = dict[str, Literal["incremental", "non-incremental"]]


# --------------------------------------------------------------------------------------------
# The command table
# --------------------------------------------------------------------------------------------

P_CALLID = Param("callid", "string", "SIP Call-ID of the dialog")
P_FROM_TAG = Param("from_tag", "string", "From-tag (caller tag) of the dialog")
P_INDEX = Param("index", "int", "number of dialogs to skip (negative: empty page)")
P_COUNTER = Param("counter", "int", "page size; 0 turns pagination off")
P_DIALOG_ID = Param("dialog_id", "string", "dlg_list ID (reversed-hex e.i) or a Call-ID")
P_EXTRA_HDRS = Param("extra_hdrs", "string", "raw header lines (with CRLF) added to the BYEs")
P_COMMAND = Param("command", "string", "an MI command name")
P_MI_CMD = Param("mi_cmd", "string", "an MI command name")
P_REVISION = Param("revision", "string", "any value: also report the source revision")
P_TIMEOUT = Param("timeout", "int", "new remaining lifetime in seconds, from now (> 0)")
P_STATISTICS = Param("statistics", "array", "statistic names, 'group:' prefixes or 'all'")
P_LEVEL = Param("level", "int", "OpenSIPS log level: -3 alert ... 1 warning, 3 info, 4 debug")
P_PID = Param("pid", "int", "the process (sipdlg's own pid)")
P_FULL = Param("full", "string", "any value: also list weight and priority")
P_DS_STATE = Param("state", "string", "a (active), i (inactive) or p (probing)")
P_DS_GROUP = Param("group", "int", "the destination set (1)")
P_DS_ADDRESS = Param("address", "string", "the destination's URI or host[:port]")

_LIST_ERRORS = [(404, "No such dialog")]
_END_ERRORS = [(404, "Requested Dialog not found"), (500, "Operation failed")]
_UNKNOWN_CMD = [(404, "unknown MI command")]


def _cmd(
    name: str,
    module: str,
    recipes: list[list[Param]],
    result: Any,
    description: str,
    **kw: Any,
) -> Command:
    return Command(
        name=name,
        module=module,
        recipes=[Recipe(name, r) for r in recipes],
        result=result,
        description=description,
        **kw,
    )


_LIST_RECIPES = [[], [P_CALLID], [P_CALLID, P_FROM_TAG], [P_INDEX, P_COUNTER]]

#: Every command, in the order ``which`` lists them (OpenSIPS: core first, then modules).
COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        _cmd(
            "get_statistics",
            "core",
            [[P_STATISTICS]],
            StatsOut,
            "Statistics by name, 'group:' (e.g. 'dialog:') or 'all'; unknown names are skipped.",
            help="prints the statistics (all, group or one) realtime values.",
        ),
        _cmd(
            "list_statistics",
            "core",
            [[], [P_STATISTICS]],
            StatKindsOut,
            "Which statistics exist and whether each is incremental.",
            help="lists all the registered statistics and their types",
        ),
        _cmd(
            "reset_statistics",
            "core",
            [[P_STATISTICS]],
            OkOut,
            "Reset resettable (incremental) statistics; 404 if no name matched.",
            help="resets the value of a statistic variable",
            errors=[(404, "Statistics Not Found")],
        ),
        _cmd(
            "reset_all_statistics",
            "core",
            [[]],
            OkOut,
            "Reset every resettable statistic.",
            help="resets the value of all resetable variables",
        ),
        _cmd(
            "uptime",
            "core",
            [[]],
            UptimeOut,
            "Current time, start time and seconds up (ctime format, local time).",
            help="prints various time information about OpenSIPS - when it started to run, "
            "for how long it runs",
        ),
        _cmd(
            "version",
            "core",
            [[], [P_REVISION]],
            VersionOut,
            "The Server signature; with 'revision' also the source revision.",
            help="prints the version string of a running OpenSIPS",
        ),
        _cmd(
            "which",
            "core",
            [[], [P_COMMAND]],
            list[str] | list[list[str]],
            "All command names, or the parameter recipes of one command.",
            help="lists all available MI commands",
            errors=_UNKNOWN_CMD,
        ),
        _cmd(
            "ps",
            "core",
            [[]],
            PsOut,
            "The processes of the server (sipdlg: one event-loop process).",
            help="lists all processes used by OpenSIPS",
        ),
        _cmd(
            "log_level",
            "core",
            [[], [P_LEVEL], [P_LEVEL, P_PID]],
            LogLevelOut,
            "The log level of each process, or set it (OpenSIPS's levels, -3 to 4).",
            help="gets or sets the log level of one or all processes",
        ),
        _cmd(
            "help",
            "core",
            [[], [P_MI_CMD]],
            HelpOut | str,
            "Usage text, or the help and exporting module of one command.",
            help="prints information about MI commands usage",
            errors=_UNKNOWN_CMD,
        ),
        _cmd(
            "dlg_list",
            "dialog",
            _LIST_RECIPES,
            DialogsOut | DialogOneOut | DialogsPageOut,
            "Dialogs: all, one by Call-ID (+ From-tag), or a page (index, counter).",
            named_only=True,
            errors=_LIST_ERRORS,
        ),
        _cmd(
            "dlg_list_ctx",
            "dialog",
            _LIST_RECIPES,
            DialogsCtxOut | DialogCtxOneOut | DialogsCtxPageOut,
            "As dlg_list, plus each dialog's 'context' object.",
            named_only=True,
            errors=_LIST_ERRORS,
        ),
        _cmd(
            "dlg_end_dlg",
            "dialog",
            [[P_DIALOG_ID], [P_DIALOG_ID, P_EXTRA_HDRS]],
            OkOut,
            "End a dialog: BYE both ways (confirmed) or CANCEL (early); reason 'MI Termination'.",
            errors=_END_ERRORS,
        ),
        _cmd(
            "dlg_db_sync",
            "dialog",
            [[]],
            OkOut,
            "Rewrite the dialog database from memory: every stored dialog is replaced by the "
            "confirmed dialogs in memory (docs/persistence.md).",
            errors=[(400, "Cannot sync in no-db mode"), (400, "Sync mem with DB failed")],
        ),
        _cmd(
            "dlg_restore_db",
            "dialog",
            [[]],
            OkOut,
            "Load the dialogs of the database that are not in memory (same IDs, lifetimes "
            "re-armed; expired ones end with 'Lifetime Timeout').",
            errors=[(400, "Cannot restore db in no-db mode!"), (400, "Restore dlg DB failed!")],
        ),
        _cmd(
            "dlg_set_timeout",
            "dialog",
            [[P_DIALOG_ID, P_TIMEOUT]],
            OkOut,
            "Beyond OpenSIPS: set a live dialog's remaining lifetime (timeout in dlg_list "
            "becomes now + timeout; an unanswered dialog gets it at confirmation).",
            help="sets the remaining lifetime (seconds) of a dialog",
            errors=[(404, "Requested Dialog not found"), (400, "Bad timeout")],
        ),
        _cmd(
            "dlg_list_ended",
            "dialog",
            [[], [P_CALLID], [P_INDEX, P_COUNTER]],
            EndedDialogsOut,
            "Beyond OpenSIPS: ended-call records, newest first: all, by Call-ID, or a page.",
            help="lists the records of ended dialogs (newest first)",
        ),
        _cmd(
            "ds_list",
            "dispatcher",
            [[], [P_FULL]],
            DsListOut,
            "The next hops (set 1 of partition 'default'), their state and first-hit counts.",
            help="lists the destination sets and the state of each destination",
        ),
        _cmd(
            "ds_set_state",
            "dispatcher",
            [[P_DS_STATE, P_DS_GROUP, P_DS_ADDRESS]],
            OkOut,
            "Set a next hop's state: a (active), i (inactive: never used), p (probing).",
            help="sets the state of a destination",
            errors=[(404, "Destination not found"), (400, "Bad state value")],
        ),
        _cmd(
            "pike_list",
            "pike",
            [[]],
            PikeListOut,
            "Source IPs over the request rate limit now (pike_requests per pike_window); "
            "empty when the limit is off.",
            help="lists the nodes in the pike tree",
        ),
    )
}


def which_names() -> list[str]:
    """The ``which`` answer without parameters."""
    return list(COMMANDS)


# --------------------------------------------------------------------------------------------
# Published JSON Schema (``sipdlg mi-schema``)
# --------------------------------------------------------------------------------------------

_RESULT_MODELS: tuple[type[BaseModel], ...] = (
    DialogsOut,
    DialogOneOut,
    DialogsPageOut,
    DialogsCtxOut,
    DialogCtxOneOut,
    DialogsCtxPageOut,
    UptimeOut,
    VersionOut,
    PsOut,
    HelpOut,
    DsListOut,
    LogLevelOut,
    PikeListOut,
)


def _params_schema(cmd: Command) -> dict[str, Any]:
    """What ``params`` may be for ``cmd``: absent, one object per recipe, or arrays."""
    alternatives: list[dict[str, Any]] = []
    for recipe in cmd.recipes:
        props = {
            p.name: {**_KIND_JSON[p.kind], "description": p.description} for p in recipe.params
        }
        alternatives.append(
            {
                "type": "object",
                "properties": props,
                "required": list(recipe.names),
                "additionalProperties": False,
            }
        )
        if recipe.names and not cmd.named_only:
            alternatives.append(
                {
                    "type": "array",
                    "prefixItems": [_KIND_JSON[p.kind] for p in recipe.params],
                    "minItems": len(recipe.names),
                    "maxItems": len(recipe.names),
                }
            )
    alternatives.append({"type": "array", "maxItems": 0})
    return {"anyOf": alternatives}


def mi_json_schema() -> dict[str, Any]:
    """The MI as one JSON Schema document: requests, per-command params and results."""
    from pydantic.json_schema import models_json_schema

    _, defs_doc = models_json_schema(
        [(m, "serialization") for m in _RESULT_MODELS], ref_template="#/$defs/{model}"
    )
    defs: dict[str, Any] = dict(defs_doc.get("$defs", {}))
    id_schema = {"type": ["string", "number", "null"], "description": "absent: notification"}
    requests = []
    commands: dict[str, Any] = {}
    from pydantic import TypeAdapter

    for cmd in COMMANDS.values():
        req_name = f"request.{cmd.name}"
        defs[req_name] = {
            "type": "object",
            "required": ["jsonrpc", "method"],
            "properties": {
                "jsonrpc": {"const": "2.0"},
                "method": {"const": cmd.name},
                "params": _params_schema(cmd),
                "id": id_schema,
            },
        }
        requests.append({"$ref": f"#/$defs/{req_name}"})
        result_schema = TypeAdapter(cmd.result).json_schema(ref_template="#/$defs/{model}")
        defs.update(result_schema.pop("$defs", {}))
        defs[f"result.{cmd.name}"] = result_schema
        commands[cmd.name] = {
            "module": cmd.module,
            "description": cmd.description,
            "named_only": cmd.named_only,
            "recipes": cmd.which(),
            "request": {"$ref": f"#/$defs/{req_name}"},
            "result": {"$ref": f"#/$defs/result.{cmd.name}"},
            "errors": [{"code": c, "message": m} for c, m in cmd.errors],
        }
    defs["error"] = {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "integer"},
            "message": {"type": "string"},
            "data": {"type": "string"},
        },
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:sipdlg:mi",
        "title": "sipdlg management interface (OpenSIPS 3.x compatible JSON-RPC 2.0 over HTTP)",
        "description": "A request posted to /mi. Replies are {jsonrpc, result|error, id}; "
        "see x-mi-commands for each command's recipes, result and errors.",
        "oneOf": requests,
        "$defs": defs,
        "x-mi-commands": commands,
        "x-mi-param-errors": [
            ERR_NAMED_ONLY,
            ERR_COUNT,
            ERR_AMBIGUOUS,
            ERR_NAMES,
            "Bad type for parameter '<name>'",
            "Bad type for array item in parameter '<name>'",
            "Empty array in parameter '<name>'",
        ],
    }
