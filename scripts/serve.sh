#!/usr/bin/env bash
# Run the proxy:  bash scripts/serve.sh [sipdlg serve options...]
# Creates .venv and installs the package on first use, compiles the engine's hot path with
# mypyc into build/native (SIPDLG_COMPILE=0 to skip; pure Python is used when it fails),
# puts `sipdlg` on PATH (a link /usr/local/bin/sipdlg -> scripts/sipdlg, when it may), then
# runs `sipdlg serve`.
set -euo pipefail
# shellcheck source=scripts/_env.sh
source "$(dirname "$0")/_env.sh"
cd "$SIPDLG_ROOT"
if [ "${SIPDLG_COMPILE:-1}" != "0" ]; then
    SIPDLG_EXTRAS="${SIPDLG_EXTRAS:-native}"
fi
ensure_venv
ensure_launcher
if [ "${SIPDLG_COMPILE:-1}" != "0" ] && "$VENV/bin/python" scripts/compile.py >&2; then
    export PYTHONPATH="$SIPDLG_ROOT/build/native${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$VENV/bin/sipdlg" serve "$@"
