"""Where ``shared/`` (the OpenSIPS reference and the RFC 4475 files) is: beside the repository
(as CI lays it out, ``../shared``), else ``/work/shared``; ``SIPDLG_SHARED`` overrides both."""

from __future__ import annotations

import os
from pathlib import Path

from .server import REPO_ROOT


def shared_dir() -> Path:
    override = os.environ.get("SIPDLG_SHARED")
    candidates = [Path(override)] if override else []
    candidates += [REPO_ROOT.parent / "shared", Path("/work/shared")]
    for path in candidates:
        if path.is_dir():
            return path
    return candidates[0]


SHARED = shared_dir()
RFC4475_DIR = SHARED / "testdata" / "rfc4475"
SAMPLES_DIR = SHARED / "reference" / "opensips-samples"
