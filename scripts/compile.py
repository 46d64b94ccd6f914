"""Compile the engine's hot-path modules to C with mypyc, into ``build/native/`` (optional).

    python scripts/compile.py            # build/native/engine: a copy of engine/ with .so files
    PYTHONPATH=build/native sipdlg serve # run with the compiled engine

The compiled modules are the same source, type-checked and translated by mypyc (about 1.5x
less CPU per call, see docs/performance.md).  The working tree is never touched, so tests and
development always run the pure-Python engine; ``scripts/serve.sh`` builds and uses the
compiled copy when it can, and falls back to pure Python when it cannot.
Rebuilds only when a file in engine/ changed (a hash of the sources is kept in a stamp).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "native")
STAMP = os.path.join(OUT, ".sources")
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


def build() -> None:
    want = sources_hash()
    if os.path.exists(STAMP) and open(STAMP).read() == want:
        print(f"compiled engine up to date in {OUT}")
        return
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
    with open(STAMP, "w") as fh:
        fh.write(want)
    print(f"compiled engine in {OUT}")


if __name__ == "__main__":
    try:
        build()
    except Exception as exc:  # no compiler, no headers: pure Python still works
        print(f"compile failed, the pure-Python engine will be used: {exc}", file=sys.stderr)
        sys.exit(1)
