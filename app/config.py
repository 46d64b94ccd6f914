"""Settings: embedded defaults, then a TOML file, then ``SIPDLG_*`` variables, then the CLI.

Every setting has one name used in all four places: ``next_hop`` in TOML is ``SIPDLG_NEXT_HOP``
in the environment and ``--next-hop`` on the command line.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any

from engine.dialog import Socket
from engine.dispatcher import Destination, parse_destination
from engine.locator import TRANSPORTS
from engine.pike import PikeConfig


class ConfigError(ValueError):
    """A setting that cannot be used; the message says which and why."""


@dataclass
class Settings:
    listen: list[str] = field(default_factory=lambda: ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"])
    #: Next hops of initial requests, tried in order of priority (OpenSIPS's dispatcher):
    #: ``[proto:]HOST[:PORT][;priority=N][;weight=N]``; a name without port is found by SRV.
    next_hop: list[str] = field(default_factory=list)
    #: Without a next hop, the networks and domains a Request-URI may send a request to.
    relay_allow: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    #: Seconds without any answer before a silent next hop is skipped for the next one.
    fr_timeout: int = 5
    #: Seconds between OPTIONS probes of the next hops (0: off; OpenSIPS's default is 10).
    probe_interval: int = 0
    #: Overload control (app/sip/overload.py): event-loop lag that starts shedding new INVITEs
    #: with 503 (0: off), seconds under half of it before it stops, the Retry-After given.
    overload_lag_ms: int = 100
    #: Bytes (KB) waiting in a UDP socket's receive queue that start shedding too (0: off).
    overload_queue_kb: int = 1024
    overload_recover: int = 2
    overload_retry_after: int = 2
    #: DNS servers for RFC 3263 routing, ``IP[:PORT]`` (default: /etc/resolv.conf's).
    dns_servers: list[str] = field(default_factory=list)
    mi_listen: str = "127.0.0.1:8888"
    mi_token: str | None = None
    mi_allow: list[str] = field(default_factory=list)
    mi_max_body: int = 1 << 20
    default_timeout: int = 43200
    hash_size: int = 4096
    max_message_size: int = 65536
    delete_delay: int = 0
    tcp_idle_timeout: int = 120
    #: Seconds between scheduled rescans of the objects the collector froze (0: only when the
    #: watchdog of app/gc_policy.py sees more of them than the engine's state explains).
    gc_rescan_period: int = 0
    log_level: str = "info"
    # Persistence (docs/persistence.md): SQLite file, relative paths under data_dir.
    db: str = "sqlite:///sipdlg.db"
    #: This node's name in a shared store: its Redis keys are ``sipdlg:<node_id>:...``.
    node_id: str = "1"
    data_dir: str = "."
    db_mode: str = "realtime"
    db_update_period: int = 60
    db_sync: str = "normal"
    ended_retention: int = 7 * 86400
    # Dialog lifecycle (docs/lifecycle.md)
    bye_on_timeout: bool = True
    ping: str = "none"
    ping_method: str = "options"
    ping_interval: int = 30
    ping_timeout: int = 5
    race_condition_timeout: int = 5
    ended_records: int = 10000
    webhook: list[str] = field(default_factory=list)
    webhook_timeout: int = 5
    event_queue: int = 1000
    # TLS (docs/tls.md): the certificate and key of tls: sockets, the CAs that servers we
    # connect to must chain to (the system's when unset), and whether to check them at all.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_verify: bool = True
    # HTTPS for the MI, /metrics and /events.
    mi_tls_cert: str | None = None
    mi_tls_key: str | None = None
    #: The Server header of sipdlg's own replies and the User-Agent of its own requests
    #: (OpenSIPS ``server_header``/``user_agent_header``): the value, or "" / "off" for none.
    server_header: str = "sipdlg"
    user_agent_header: str = "sipdlg"
    # Flood protection (docs/flood.md): OpenSIPS pike's reqs_density_per_unit per
    # sampling_time_unit; 0 requests turns it off.
    pike_requests: int = 30
    pike_window: int = 2
    pike_trusted: list[str] = field(default_factory=list)

    def sockets(self) -> list[Socket]:
        return [parse_socket(s) for s in self.listen]

    def has_wildcard_listen(self) -> bool:
        return any(s.host in ("0.0.0.0", "::") for s in self.sockets())

    def destinations(self) -> list[Destination]:
        return [parse_next_hop(text) for text in self.next_hop]

    def dns_server_addresses(self) -> list[tuple[str, int]]:
        out = []
        for text in self.dns_servers:
            if text.rpartition(":")[2].isdigit() and (text.count(":") == 1 or "]" in text):
                out.append(split_host_port(text, "dns_servers"))
            else:
                out.append((text.strip("[]"), 53))
        for host, _ in out:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ConfigError(f"dns_servers: {host!r} is not an IP address") from None
        return out

    def pike_config(self) -> PikeConfig | None:
        """The rate limit's settings, None when off.  Besides ``pike_trusted``, the engine
        exempts its own addresses and the next hops given as addresses; a next hop given by
        name is exempted by its addresses, looked up here once (system resolver)."""
        if self.pike_requests <= 0:
            return None
        trusted = list(self.pike_trusted)
        for hop in self.destinations():
            if not _is_address(hop.host):
                trusted += _addresses_of(hop.host)
        return PikeConfig(self.pike_requests, float(self.pike_window), tuple(trusted))

    def stores_changes(self) -> bool:
        """Whether dialog changes are written as they happen (a database, not ``shutdown``
        mode, which writes only at a clean stop)."""
        from .store.sqlite import parse_db_url

        return parse_db_url(self.db, self.data_dir) is not None and self.db_mode != "shutdown"

    def header_values(self) -> tuple[str, str]:
        """The Server and User-Agent values to send ("" for none)."""
        return (
            header_value("server_header", "Server", self.server_header),
            header_value("user_agent_header", "User-Agent", self.user_agent_header),
        )

    def mi_address(self) -> tuple[str, int] | None:
        """The MI's HTTP address; None when ``mi_listen`` is ``none`` (no MI at all)."""
        if self.mi_listen.strip().lower() == "none":
            return None
        host, port = split_host_port(self.mi_listen, "--mi-listen")
        return host, port


HOST_NAME = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
LIST_FIELDS = {
    "listen",
    "mi_allow",
    "webhook",
    "next_hop",
    "relay_allow",
    "dns_servers",
    "pike_trusted",
}
BOOL_FIELDS = {"bye_on_timeout", "tls_verify"}
PING_MODES = ("none", "caller", "callee", "both")
INT_FIELDS = {
    "overload_lag_ms",
    "overload_queue_kb",
    "overload_recover",
    "overload_retry_after",
    "fr_timeout",
    "probe_interval",
    "db_update_period",
    "ended_retention",
    "ping_interval",
    "ping_timeout",
    "race_condition_timeout",
    "ended_records",
    "webhook_timeout",
    "event_queue",
    "mi_max_body",
    "default_timeout",
    "hash_size",
    "max_message_size",
    "delete_delay",
    "tcp_idle_timeout",
    "gc_rescan_period",
    "pike_requests",
    "pike_window",
}


def header_value(setting: str, name: str, text: str) -> str:
    """A header setting as the value to write: "" and "off" mean none, and the whole header
    as OpenSIPS writes it (``Server: X``) is taken too.  One line only: a CR or LF would let
    the setting inject headers into every message."""
    value = text.strip()
    if value.lower() == "off":
        return ""
    head, colon, rest = value.partition(":")
    if colon and head.strip().lower() == name.lower():
        value = rest.strip()
    if any(c in value for c in "\r\n\0") or not value.isprintable():
        raise ConfigError(f"{setting}: expected one line of printable text, got {text!r}")
    return value


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _addresses_of(host: str) -> list[str]:
    """The addresses of a host name (at start, once); none if it does not resolve now."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError as exc:
        logging.getLogger("sipdlg").warning(
            "pike: next hop %s does not resolve (%s); list its addresses in pike_trusted",
            host,
            exc,
        )
        return []
    return sorted({str(info[4][0]) for info in infos})


def split_host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_socket(text: str) -> Socket:
    """OpenSIPS ``socket=`` syntax: ``proto:ip:port``, optionally ``as advertised_ip:port``
    (the address peers reach the socket at: NAT, containers, wildcard binds)."""
    spec, sep, advertised = text.partition(" as ")
    spec = spec.strip()
    proto, colon, rest = spec.partition(":")
    proto = proto.lower()
    if not colon or proto not in TRANSPORTS:
        raise ConfigError(f"--listen: expected udp:, tcp: or tls:IP:PORT, got {text!r}")
    host, port = split_host_port(rest, "--listen")
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ConfigError(f"--listen: {host!r} is not an IP address") from exc
    host = address.compressed
    if not sep:
        if address.is_unspecified:
            raise ConfigError(
                f"--listen {text}: a wildcard address cannot be written into Via and "
                f"Record-Route; add the address phones reach it at: "
                f"'{spec} as PUBLIC_IP:{port}', or listen on each address"
            )
        return Socket(proto, host, port)
    adv_host, adv_port = split_host_port(advertised.strip(), "--listen ... as")
    try:
        adv = ipaddress.ip_address(adv_host)
    except ValueError:  # a host name, advertised as written (peers resolve it, RFC 3263)
        if not HOST_NAME.fullmatch(adv_host):
            raise ConfigError(
                f"--listen {text}: {adv_host!r} is neither an IP nor a host name"
            ) from None
    else:
        if adv.is_unspecified:
            raise ConfigError(f"--listen {text}: cannot advertise a wildcard address")
        adv_host = adv.compressed
    return Socket(proto, host, port, adv_host.lower(), adv_port)


def parse_next_hop(text: str) -> Destination:
    """``[proto:]HOST[:PORT][;priority=N][;weight=N]`` or a ``sip:`` URI."""
    try:
        return parse_destination(text)
    except ValueError as exc:
        raise ConfigError(f"--next-hop: {exc}") from None


def _listen_entry(value: Any) -> str:
    """A TOML ``listen`` item: ``"udp:IP:PORT [as IP:PORT]"`` or a table
    ``{socket = "udp:IP:PORT", advertise = "IP:PORT"}``."""
    if isinstance(value, dict):
        unknown = set(value) - {"socket", "advertise"}
        if unknown or "socket" not in value:
            raise ConfigError(f"listen: expected {{socket, advertise}}, got {value!r}")
        if value.get("advertise"):
            return f"{value['socket']} as {value['advertise']}"
        return str(value["socket"])
    return str(value)


def _next_hop_entry(value: Any) -> str:
    """A TOML ``next_hop`` item: a string, or ``{target = "...", priority = N, weight = N}``."""
    if isinstance(value, dict):
        unknown = set(value) - {"target", "priority", "weight"}
        if unknown or "target" not in value:
            raise ConfigError(f"next_hop: expected {{target, priority, weight}}, got {value!r}")
        extra = "".join(f";{k}={value[k]}" for k in ("priority", "weight") if k in value)
        return f"{value['target']}{extra}"
    return str(value)


def _coerce(name: str, value: Any) -> Any:
    if name == "listen" and isinstance(value, list):
        return [_listen_entry(v) for v in value]
    if name == "next_hop" and isinstance(value, list):
        return [_next_hop_entry(v) for v in value]
    if name in LIST_FIELDS:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return [str(v) for v in value]
    if name in BOOL_FIELDS:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if name in INT_FIELDS:
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from exc
    return None if value is None else str(value)


def load_settings(
    cli: dict[str, Any], config_file: str | None, environ: dict[str, str] | None = None
) -> Settings:
    settings = Settings()
    names = {f.name for f in fields(Settings)}
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config: {config_file} is not valid TOML: {exc}") from exc
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ConfigError(f"--config: unknown setting {key!r}")
            setattr(settings, name, _coerce(name, value))
    env = os.environ if environ is None else environ
    for name in names:
        value = env.get(f"SIPDLG_{name.upper()}")
        if value is not None:
            setattr(settings, name, _coerce(name, value))
    for name, value in cli.items():
        if value is not None and name in names:
            setattr(settings, name, _coerce(name, value))
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    sockets = settings.sockets()
    for hop in settings.destinations():
        if hop.proto and all(s.proto != hop.proto for s in sockets):
            raise ConfigError(
                f"--next-hop {hop.uri}: no {hop.proto} socket to send from; "
                f"add --listen {hop.proto}:IP:PORT"
            )
    settings.dns_server_addresses()
    if settings.overload_queue_kb < 0:
        raise ConfigError("overload_queue_kb must not be negative")
    if settings.overload_lag_ms < 0 or settings.overload_recover <= 0:
        raise ConfigError("overload_lag_ms must not be negative, overload_recover positive")
    if settings.overload_retry_after <= 0:
        raise ConfigError("overload_retry_after must be positive")
    if settings.fr_timeout <= 0 or settings.probe_interval < 0:
        raise ConfigError("fr_timeout must be positive, probe_interval not negative")
    settings.mi_address()
    settings.header_values()
    if settings.hash_size <= 0 or settings.hash_size & (settings.hash_size - 1):
        raise ConfigError("hash_size must be a power of two")
    if settings.default_timeout <= 0:
        raise ConfigError("default_timeout must be positive")
    if settings.max_message_size < 1024:
        raise ConfigError("max_message_size must be at least 1024")
    if settings.db_mode not in ("realtime", "delayed", "shutdown"):
        raise ConfigError(
            f"db_mode: expected realtime, delayed or shutdown, got {settings.db_mode!r}"
        )
    if settings.db_sync not in ("off", "normal", "full"):
        raise ConfigError(f"db_sync: expected off, normal or full, got {settings.db_sync!r}")
    if settings.db_update_period <= 0:
        raise ConfigError("db_update_period must be positive")
    if settings.ended_retention < 0:
        raise ConfigError("ended_retention must not be negative")
    if settings.gc_rescan_period < 0:
        raise ConfigError("gc_rescan_period must not be negative (0: never)")
    from .store.sqlite import parse_db_url

    try:
        parse_db_url(settings.db, settings.data_dir)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if settings.ping_method not in ("options", "reinvite"):
        raise ConfigError(
            f"ping_method: expected options or reinvite, got {settings.ping_method!r}"
        )
    if settings.ping not in PING_MODES:
        raise ConfigError(f"ping: expected one of {', '.join(PING_MODES)}, got {settings.ping!r}")
    if settings.ping_interval <= 0 or settings.ping_timeout <= 0:
        raise ConfigError("ping_interval and ping_timeout must be positive")
    if settings.race_condition_timeout <= 0:
        raise ConfigError("race_condition_timeout must be positive")
    if settings.webhook_timeout <= 0 or settings.event_queue <= 0:
        raise ConfigError("webhook_timeout and event_queue must be positive")
    if settings.ended_records < 0:
        raise ConfigError("ended_records must not be negative")
    if settings.pike_requests < 0:
        raise ConfigError("pike_requests must not be negative (0: no rate limit)")
    if settings.pike_window <= 0:
        raise ConfigError("pike_window must be positive")
    for net in settings.pike_trusted:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"pike_trusted: expected an address or a CIDR network, got {net!r}"
            ) from None
    for url in settings.webhook:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"webhook: expected an http:// or https:// URL, got {url!r}")
