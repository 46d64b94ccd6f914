"""``sipdlg mi``: a stdlib-only MI client for scripts, mapping arguments like opensips-cli.

An ``https://`` URL checks the MI's certificate against the system's CAs, or the ones in
``--cacert FILE`` (``SIPDLG_MI_CACERT``); ``--insecure`` (``SIPDLG_MI_INSECURE=1``) skips the
check, as curl's ``-k`` does.

``name=value`` arguments (all of them) become named params with string values; otherwise all
arguments go positionally as strings.  For the statistics commands the values become one array
(``sipdlg mi get_statistics dialog: core:`` sends ``[["dialog:","core:"]]``), as opensips-cli
does.  ``-j`` parses each value as JSON first.  The result is printed as indented JSON; an
error prints ``code: message (data)`` on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8888/mi"

#: command -> (index of the array param among the positional args, its name); opensips-cli's
#: MI_ARRAY_PARAMS_COMMANDS restricted to what an MI server like ours exposes.
ARRAY_PARAMS: dict[str, tuple[int, str]] = {
    "get_statistics": (0, "statistics"),
    "list_statistics": (0, "statistics"),
    "reset_statistics": (0, "statistics"),
    "statistics:get": (0, "statistics"),
    "statistics:list": (0, "statistics"),
    "statistics:reset": (0, "statistics"),
    "dlg_push_var": (2, "DID"),
    "dialog:push_var": (2, "DID"),
}

_NAMED = re.compile(r"([a-zA-Z._-]+)=")


def build_params(method: str, args: list[str], as_json: bool = False) -> list[Any] | dict[str, Any]:
    """The JSON-RPC ``params`` opensips-cli would send for these command-line arguments."""
    if args and all(_NAMED.match(a) for a in args):
        named: dict[str, Any] = {}
        for arg in args:
            name, _, value = arg.partition("=")
            parsed: Any = value
            if as_json:
                parsed = _maybe_json(value)
            elif method in ARRAY_PARAMS and ARRAY_PARAMS[method][1] == name:
                parsed = shlex.split(value)
            named[name] = parsed
        return named
    values: list[Any] = [_maybe_json(a) for a in args] if as_json else list(args)
    if method not in ARRAY_PARAMS or as_json:
        return values
    idx = ARRAY_PARAMS[method][0]
    head = values[:idx]
    if values[idx:]:
        head.append(values[idx:])
    return head


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


class MiCallError(Exception):
    """The MI answered with a JSON-RPC error, or could not be reached."""


def call(
    url: str,
    method: str,
    params: list[Any] | dict[str, Any] | None = None,
    *,
    token: str | None = None,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> Any:
    """One MI call; returns ``result`` or raises MiCallError with OpenSIPS's error text.
    ``tls``: how an https:// MI is checked (default: against the system's CAs)."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": str(random.randint(0, 32767)),
            "method": method,
            "params": params or {},
        }
    ).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, body, headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=tls) as rpl:
            raw = rpl.read()
    except urllib.error.HTTPError as exc:
        hint = " (use --token or SIPDLG_MI_TOKEN)" if exc.code == 401 else ""
        raise MiCallError(f"HTTP {exc.code} {exc.reason}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        hint = ""
        if isinstance(reason, ssl.SSLCertVerificationError):
            hint = " (use --cacert FILE or SIPDLG_MI_CACERT)"
        raise MiCallError(f"cannot reach the MI at {url}: {reason}{hint}") from None
    try:
        reply = json.loads(raw)
    except ValueError:
        raise MiCallError(f"not a JSON-RPC reply: {raw[:200]!r}") from None
    err = reply.get("error") if isinstance(reply, dict) else None
    if isinstance(err, dict):
        data = f" ({err['data']})" if err.get("data") else ""
        raise MiCallError(f"{err.get('code')}: {err.get('message')}{data}")
    if not isinstance(reply, dict) or "result" not in reply:
        raise MiCallError("-32603: Internal error")
    return reply["result"]


def tls_context(cafile: str | None, insecure: bool) -> ssl.SSLContext:
    """How the client checks an https:// MI: ``cafile``'s CAs (else the system's), or not at
    all when ``insecure``."""
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def health_url(mi_url: str | None) -> str:
    """``GET /health`` on the server of ``mi_url`` ($SIPDLG_MI_URL), else the default MI's."""
    parts = urllib.parse.urlsplit(mi_url or DEFAULT_URL)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/health", "", ""))


def check_health(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """(ready, what the server said) for ``sipdlg health`` (Docker's HEALTHCHECK)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status == 200, reply.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return False, exc.read().decode(errors="replace").strip() or f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"cannot reach {url}: {exc}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sipdlg mi",
        description="Call the sipdlg (or OpenSIPS) MI over HTTP JSON-RPC.",
        epilog="examples: sipdlg mi dlg_list | sipdlg mi dlg_list callid=abc@h | "
        "sipdlg mi dlg_end_dlg baa.2d206994 | sipdlg mi get_statistics dialog:",
    )
    p.add_argument(
        "--url",
        default=os.environ.get("SIPDLG_MI_URL", DEFAULT_URL),
        help=f"the MI to call, http:// or https://: $SIPDLG_MI_URL when set, else {DEFAULT_URL} "
        "(the address of `sipdlg serve --mi-listen`, path /mi; now %(default)s)",
    )
    p.add_argument(
        "--cacert",
        metavar="FILE",
        default=os.environ.get("SIPDLG_MI_CACERT"),
        help="PEM CAs an https:// MI's certificate must chain to (SIPDLG_MI_CACERT; "
        "default: the system's)",
    )
    p.add_argument(
        "-k",
        "--insecure",
        action="store_true",
        default=os.environ.get("SIPDLG_MI_INSECURE", "") in ("1", "true", "yes", "on"),
        help="do not check an https:// MI's certificate (SIPDLG_MI_INSECURE=1)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("SIPDLG_MI_TOKEN"),
        help="the MI's --mi-token, sent as a Bearer token (default $SIPDLG_MI_TOKEN)",
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the answer (30)"
    )
    p.add_argument("-j", dest="as_json", action="store_true", help="parse values as JSON")
    p.add_argument("method")
    p.add_argument("args", nargs="*", help="name=value ... or value ...")
    return p


def main(argv: list[str]) -> int:
    """Entry point of ``sipdlg mi``; returns the process exit code."""
    opts = _parser().parse_args(argv)
    params = build_params(opts.method, opts.args, opts.as_json)
    try:
        tls = tls_context(opts.cacert, opts.insecure) if opts.url.startswith("https:") else None
    except OSError as exc:  # a missing or unreadable CA file
        print(f"error: --cacert {opts.cacert}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        result = call(
            opts.url, opts.method, params, token=opts.token, timeout=opts.timeout, tls=tls
        )
    except MiCallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(result, indent=4, ensure_ascii=False), flush=True)
    except BrokenPipeError:  # `sipdlg mi ... | head`: the reader took what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


__all__ = ["build_params", "call", "check_health", "health_url", "main", "MiCallError"]
