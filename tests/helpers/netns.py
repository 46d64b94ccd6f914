"""Run code in a fresh network namespace (``unshare -n``) where only ``lo`` exists.

Used for tests that send hostile input: inside the namespace the only
reachable network is loopback, so nothing can leak out.

* :func:`netns_support` — can we create one here? (``unshare -n``, falling back
  to an unprivileged user+net namespace ``unshare -rn``).
* :func:`run_in_netns` — run a command inside one (``lo`` brought up first).
* :func:`call_in_netns` — call an importable Python function inside one and
  get its (picklable) return value back.
* ``@pytest.mark.netns`` — the whole test is re-executed by a child pytest
  inside a namespace (wired in ``tests/conftest.py`` via
  :func:`run_pytest_item_in_netns`); skipped with the reason if unsupported.
"""

from __future__ import annotations

import base64
import functools
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IN_NETNS_ENV = "SIPDLG_IN_NETNS"

_LO_UP = 'ip link set lo up && exec "$@"'


def in_netns() -> bool:
    """True inside a namespace made by these helpers."""
    return os.environ.get(IN_NETNS_ENV) == "1"


@dataclass(frozen=True)
class NetnsSupport:
    ok: bool
    prefix: tuple[str, ...]
    reason: str


@functools.cache
def netns_support() -> NetnsSupport:
    """Probe once whether ``unshare`` may create a network namespace here."""
    unshare = shutil.which("unshare")
    ip = shutil.which("ip")
    if unshare is None:
        return NetnsSupport(False, (), "unshare(1) not found (util-linux)")
    if ip is None:
        return NetnsSupport(False, (), "ip(8) not found (apt-get install iproute2)")
    reasons = []
    for flags in (("-n",), ("-r", "-n")):
        prefix = (unshare, *flags, "--")
        try:
            proc = subprocess.run(
                [*prefix, "sh", "-c", _LO_UP, "sh", "true"],
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.append(f"unshare {' '.join(flags)}: {exc}")
            continue
        if proc.returncode == 0:
            return NetnsSupport(True, prefix, "")
        reasons.append(f"unshare {' '.join(flags)}: {proc.stderr.strip() or proc.returncode}")
    return NetnsSupport(False, (), "cannot create a network namespace: " + "; ".join(reasons))


def netns_command(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped to run in a new network namespace with ``lo`` up."""
    support = netns_support()
    if not support.ok:
        raise RuntimeError(support.reason)
    return [*support.prefix, "sh", "-c", _LO_UP, "sh", *argv]


def run_in_netns(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 300,
    **kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(argv)`` inside a fresh network namespace.

    ``SIPDLG_IN_NETNS=1`` is set in the child's environment.
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env[IN_NETNS_ENV] = "1"
    return subprocess.run(netns_command(argv), env=full_env, timeout=timeout, **kwargs)


# ------------------------------------------------------------ functions

_CHILD = r"""
import base64, importlib, pickle, sys, traceback
payload = pickle.loads(base64.b64decode(sys.stdin.buffer.read()))
sys.path[:0] = [p for p in payload["path"] if p not in sys.path]
try:
    obj = importlib.import_module(payload["module"])
    for part in payload["qualname"].split("."):
        obj = getattr(obj, part)
    out = {"ok": True, "value": obj(*payload["args"], **payload["kwargs"])}
except BaseException as exc:
    out = {"ok": False, "error": repr(exc), "traceback": traceback.format_exc()}
sys.stdout.flush()
sys.stdout.buffer.write(b"\n@@NETNS-RESULT@@" + base64.b64encode(pickle.dumps(out)))
"""


class NetnsCallError(RuntimeError):
    pass


def call_in_netns(func: Callable[..., Any], *args: Any, timeout: float = 300, **kwargs: Any) -> Any:
    """Call ``func(*args, **kwargs)`` in a child Python inside a new network
    namespace and return its result. ``func`` must be importable by module and
    qualified name (a module-level function); arguments and result must pickle."""
    module = func.__module__
    if module == "__main__":
        raise ValueError("call_in_netns needs an importable function, not one from __main__")
    payload = {
        "module": module,
        "qualname": func.__qualname__,
        "args": args,
        "kwargs": kwargs,
        "path": [p for p in sys.path if p],
    }
    proc = run_in_netns(
        [sys.executable, "-c", _CHILD],
        input=base64.b64encode(pickle.dumps(payload)),
        capture_output=True,
        timeout=timeout,
    )
    marker = b"\n@@NETNS-RESULT@@"
    stdout: bytes = proc.stdout
    if marker not in stdout:
        raise NetnsCallError(
            f"child exited {proc.returncode} without a result\n"
            f"stdout:\n{stdout.decode(errors='replace')}\n"
            f"stderr:\n{proc.stderr.decode(errors='replace')}"
        )
    out = pickle.loads(base64.b64decode(stdout.rsplit(marker, 1)[1]))
    if not out["ok"]:
        raise NetnsCallError(f"{func.__qualname__} raised {out['error']}\n{out['traceback']}")
    return out["value"]


# --------------------------------------------------------- pytest glue


@dataclass(frozen=True)
class NetnsRun:
    outcome: str  # "passed" | "failed" | "skipped"
    output: str
    skip_reason: str = ""


_SKIP_RE = re.compile(r"^SKIPPED \[\d+\] (?:[^:]+:\d+: )?(.*)$", re.M)


def run_pytest_item_in_netns(nodeid: str, rootdir: Path, timeout: float = 600) -> NetnsRun:
    """Re-run one pytest node id in a child pytest inside a network namespace."""
    try:
        proc = run_in_netns(
            [
                sys.executable,
                "-m",
                "pytest",
                nodeid,
                "-q",
                "-rs",
                "--no-header",
                "-p",
                "no:cacheprovider",
            ],
            cwd=rootdir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        return NetnsRun("failed", f"timed out after {timeout}s in netns\n{out}")
    output = proc.stdout + proc.stderr
    if proc.returncode == 0 and re.search(r"\b\d+ passed\b", output):
        return NetnsRun("passed", output)
    if proc.returncode == 0 and re.search(r"\b\d+ skipped\b", output):
        m = _SKIP_RE.search(output)
        return NetnsRun("skipped", output, m.group(1) if m else "skipped inside netns")
    return NetnsRun("failed", f"child pytest exit {proc.returncode}\n{output}")
