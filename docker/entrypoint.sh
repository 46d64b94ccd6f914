#!/bin/sh
# The container's sockets: every address, advertised in Via and Record-Route as the address
# the other containers reach this one at (its first IP), unless SIPDLG_LISTEN is set, e.g.
#   SIPDLG_LISTEN="udp:0.0.0.0:5060 as 203.0.113.5:5060,tcp:0.0.0.0:5060 as 203.0.113.5:5060"
# for phones that reach the host's published ports at 203.0.113.5.
set -eu
if [ -z "${SIPDLG_LISTEN:-}" ]; then
    ip="$(hostname -i | cut -d' ' -f1)"
    SIPDLG_LISTEN="udp:0.0.0.0:5060 as $ip:5060,tcp:0.0.0.0:5060 as $ip:5060"
    export SIPDLG_LISTEN
fi
exec "$@"
