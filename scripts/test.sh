#!/usr/bin/env bash
# The project's test command (CI runs it through .ci/run).
#   bash scripts/test.sh [pytest args...]
# On a fresh Debian 12 + Python 3.11 machine (as root) it installs what the
# tests need: the virtualenv .venv with the package and its [test] extra, SIPp
# (Debian package sip-tester), redis-server and iproute2. Exit status is pytest's.
set -euo pipefail
# shellcheck source=scripts/_env.sh
source "$(dirname "$0")/_env.sh"
cd "$SIPDLG_ROOT"

if ! command -v sipp >/dev/null 2>&1; then
    apt_install sip-tester
fi
if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server
fi
if ! command -v ip >/dev/null 2>&1; then
    apt_install iproute2
fi

SIPDLG_EXTRAS=test ensure_venv

# Tests that need sipp must fail (not skip) when it is missing under this script.
export SIPDLG_REQUIRE_SIPP=1
log "$("$VENV/bin/python" --version 2>&1), $(sipp -v 2>/dev/null | grep -o 'SIPp v[^ ]*' | head -1)"

set +e
"$VENV/bin/python" -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    log "pytest collected no tests"
fi
exit "$rc"
