"""Compile the engine's hot-path modules to C with mypyc, into ``build/native/`` (optional).

    python scripts/compile.py            # build/native/engine: a copy of engine/ with .so files
    PYTHONPATH=build/native sipdlg serve # run with the compiled engine

The compiled modules are the same source, type-checked and translated by mypyc (about 1.5x
less CPU per call, see docs/performance.md).  The working tree is never touched, so tests and
development always run the pure-Python engine; ``scripts/serve.sh`` builds and uses the
compiled copy when it can, and falls back to pure Python when it cannot.
Rebuilds only when a file in engine/ changed (a hash of the sources is kept in a stamp).
Quiet: mypyc's and the C compiler's output go to build/compile.log, shown only if the build
fails.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "native")
STAMP = os.path.join(OUT, ".sources")
LOG = os.path.join(ROOT, "build", "compile.log")
MODULES = [
    "address",
    "dialog",
    "dispatcher",
    "failover",
    "dlg_life",
    "dlg_timer",
    "errors",
    "dlg_handlers",
    "dlg_req_within",
    "dlg_table",
    "events",
    "framing",
    "locator",
    "message",
    "pike",
    "proxy",
    "relay",
    "stats",
    "timers",
    "transaction",
]


def sources_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(ROOT, "engine", "*.py"))):
        with open(path, "rb") as fh:
            digest.update(os.path.basename(path).encode() + b"\0" + fh.read())
    return digest.hexdigest()


@contextmanager
def output_to(path: str) -> Iterator[None]:
    """Send this process's stdout and stderr, and its children's (the C compiler), to
    ``path``: at the file descriptors, since the compiler writes there directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "wb") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def build() -> None:
    want = sources_hash()
    if os.path.exists(STAMP) and open(STAMP).read() == want:
        os.utime(STAMP)  # newer than the sources again: scripts/sipdlg compares the times
        return
    print("compiling the engine with mypyc (about 20 s, once per change)...", flush=True)
    started = time.monotonic()
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    with output_to(LOG):
        compile_engine()
    with open(STAMP, "w") as fh:
        fh.write(want)
    print(f"compiled engine in {OUT} ({time.monotonic() - started:.0f} s)")


def compile_engine() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    shutil.copytree(
        os.path.join(ROOT, "engine"),
        os.path.join(OUT, "engine"),
        ignore=shutil.ignore_patterns("__pycache__", "*.so"),
    )
    os.chdir(OUT)
    extensions = mypycify(
        [f"engine/{name}.py" for name in MODULES],
        opt_level="3",
        group_name="engine.native",
        target_dir="build",
    )
    setup(
        name="sipdlg-engine-native",
        ext_modules=extensions,
        script_args=["build_ext", "--inplace", "--build-temp", "build/tmp", "-q"],
    )


def log_tail(lines: int = 40) -> str:
    try:
        with open(LOG, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""


if __name__ == "__main__":
    try:
        build()
    except BaseException as exc:  # no compiler, no headers: pure Python still works
        if isinstance(exc, KeyboardInterrupt):
            raise
        print(log_tail(), file=sys.stderr, end="")
        print(
            f"compile failed ({exc}; full log: {LOG}); the pure-Python engine will be used",
            file=sys.stderr,
        )
        sys.exit(1)
