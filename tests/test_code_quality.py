"""The code stays as the developers' guide asks: ruff-clean, ruff-formatted, and type-checked
by mypy (the server, the engine, the schemas, the benchmarks and these tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["app", "engine", "schemas", "bench", "tests", "scripts"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_lint() -> None:
    res = _run("ruff", "check", *CHECKED)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_format() -> None:
    res = _run("ruff", "format", "--check", *CHECKED)
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy() -> None:
    res = _run("mypy", *CHECKED)
    assert res.returncode == 0, res.stdout + res.stderr
