# shellcheck shell=bash
# Shared set-up for scripts/test.sh and scripts/serve.sh (sourced, not executed).
# Creates ./.venv when missing and installs the project into it (editable), with
# the optional-dependency group given in SIPDLG_EXTRAS (e.g. "test"). Re-installs
# only when pyproject.toml changed since the last successful install.

SIPDLG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SIPDLG_VENV:-$SIPDLG_ROOT/.venv}"

log() { printf '[sipdlg] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        log "need root to run: $*"
        return 1
    fi
}

APT_UPDATED=0
apt_install() {
    # apt_install PKG... : install Debian packages quietly (non-interactive).
    if ! command -v apt-get >/dev/null 2>&1; then
        log "apt-get not available; please install: $*"
        return 1
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating virtualenv $VENV"
        if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
            # Debian splits ensurepip into python3-venv.
            rm -rf "$VENV"
            apt_install python3-venv
            python3 -m venv "$VENV"
        fi
    fi
    local extras="${SIPDLG_EXTRAS:-}"
    local spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    # One stamp per extras set, holding the hash of the pyproject.toml installed.
    local want stamp
    want="$(sha256sum <"$SIPDLG_ROOT/pyproject.toml" | cut -d' ' -f1)"
    stamp="$VENV/.sipdlg-installed-${extras:-base}"
    if [ -z "$extras" ]; then
        # Any extras install also satisfies the plain one.
        for f in "$VENV"/.sipdlg-installed-*; do
            [ -f "$f" ] && [ "$(cat "$f")" = "$want" ] && return 0
        done
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        log "pip install -e '$spec'"
        (cd "$SIPDLG_ROOT" && "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$spec")
        printf '%s' "$want" >"$stamp"
    fi
}

ensure_launcher() {
    # `sipdlg` on PATH for the README's other commands (`sipdlg mi dlg_list`): a link
    # /usr/local/bin/sipdlg -> scripts/sipdlg, made once when that directory is writable
    # (root) and no other sipdlg is on PATH; else one line says how (SIPDLG_LAUNCHER=0: skip).
    [ "${SIPDLG_LAUNCHER:-1}" = "0" ] && return 0
    command -v sipdlg >/dev/null 2>&1 && return 0
    local bin="${SIPDLG_LAUNCHER_DIR:-/usr/local/bin}"
    if [ -d "$bin" ] && [ -w "$bin" ] && [ ! -e "$bin/sipdlg" ]; then
        ln -s "$SIPDLG_ROOT/scripts/sipdlg" "$bin/sipdlg"
        log "installed $bin/sipdlg -> $SIPDLG_ROOT/scripts/sipdlg"
    else
        log "sipdlg is not on PATH: run $SIPDLG_ROOT/scripts/sipdlg, or: export PATH=\"$SIPDLG_ROOT/scripts:\$PATH\""
    fi
}
