"""The mypyc-compiled engine (what scripts/serve.sh runs) passes the engine's own tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_compiled_engine_passes_engine_tests() -> None:
    build = subprocess.run(
        [sys.executable, "scripts/compile.py"], cwd=ROOT, capture_output=True, text=True
    )
    if build.returncode != 0:
        pytest.skip(f"no C toolchain for mypyc here: {build.stderr[-500:]}")
    native = ROOT / "build" / "native"
    env = dict(os.environ, PYTHONPATH=str(native))
    probe = subprocess.run(
        [sys.executable, "-c", "import engine.proxy as p; print(p.__file__)"],
        cwd=native,
        env=env,
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip().endswith(".so"), probe.stdout + probe.stderr
    tests = sorted(
        str(p)
        for p in (ROOT / "tests").glob("test_*.py")
        if p.name.startswith(("test_engine", "test_parser", "test_transaction"))
        or p.name == "test_lifecycle_engine.py"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(ROOT),
            *tests,
        ],
        cwd=native,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
