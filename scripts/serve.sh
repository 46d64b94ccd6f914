#!/usr/bin/env bash
# Run the proxy:  bash scripts/serve.sh [sipdlg serve options...]
# Creates .venv and installs the package on first use, then runs `sipdlg serve`.
set -euo pipefail
# shellcheck source=scripts/_env.sh
source "$(dirname "$0")/_env.sh"
cd "$SIPDLG_ROOT"
ensure_venv
exec "$VENV/bin/sipdlg" serve "$@"
