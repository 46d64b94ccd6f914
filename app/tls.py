"""TLS contexts built from the settings, once, before anything binds (docs/tls.md).

SIP over TLS (``tls:`` sockets: ``tls_cert``, ``tls_key``, ``tls_ca``, ``tls_verify``) and HTTPS
for the MI (``mi_tls_cert``, ``mi_tls_key``).  Every problem with a file is a ``ConfigError``
that names the setting and the file, which the command line prints on one line (exit 2)
instead of failing on the first call.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass

from .config import ConfigError, Settings

#: Older protocol versions are refused in both directions (RFC 8996).
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True, slots=True)
class TlsContexts:
    """``server`` for connections accepted on ``tls:`` sockets, ``client`` for the ones
    opened to TLS targets (present together: both exist only with a ``tls:`` socket),
    ``mi`` for HTTPS on the MI.  None where not configured."""

    server: ssl.SSLContext | None = None
    client: ssl.SSLContext | None = None
    mi: ssl.SSLContext | None = None


def load_tls(settings: Settings) -> TlsContexts:
    """Load and check every certificate, key and CA the settings name."""
    tls_sockets = [s for s in settings.sockets() if s.proto == "tls"]
    server = client = None
    if settings.tls_key and not settings.tls_cert:
        raise ConfigError("tls_key is set but tls_cert is not: set both (--tls-cert, --tls-key)")
    if tls_sockets:
        if not settings.tls_cert:
            raise ConfigError(
                f"--listen {tls_sockets[0]}: a TLS socket needs a certificate: "
                f"set tls_cert and tls_key (--tls-cert, --tls-key)"
            )
        server = _context(ssl.PROTOCOL_TLS_SERVER)
        _load_pair(server, "tls", settings.tls_cert, settings.tls_key)
        client = _client_context(settings)
    if settings.mi_tls_key and not settings.mi_tls_cert:
        raise ConfigError("mi_tls_key is set but mi_tls_cert is not: set both")
    mi = None
    if settings.mi_tls_cert:
        mi = _context(ssl.PROTOCOL_TLS_SERVER)
        _load_pair(mi, "mi_tls", settings.mi_tls_cert, settings.mi_tls_key)
    return TlsContexts(server, client, mi)


def _context(protocol: ssl._SSLMethod) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = MINIMUM_VERSION
    return context


def _client_context(settings: Settings) -> ssl.SSLContext:
    """Servers we connect to are checked against ``tls_ca`` (else the system's CAs) and the
    name or address we connected to, unless ``tls_verify`` is off.  Our own certificate is
    presented to servers that ask for one (mutual TLS with a trunk)."""
    client = _context(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    if settings.tls_verify:
        if settings.tls_ca:
            _load_ca(client, settings.tls_ca)
        else:
            client.load_default_certs()
    else:
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        if settings.tls_ca:  # still checked, so that a typo is found before it matters
            _load_ca(client, settings.tls_ca)
    assert settings.tls_cert is not None
    _load_pair(client, "tls", settings.tls_cert, settings.tls_key)
    return client


def _read(setting: str, path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"{setting} {path}: cannot read: {exc.strerror}") from None


def _load_pair(context: ssl.SSLContext, prefix: str, cert: str, key: str | None) -> None:
    """The certificate chain and its private key (``key`` None: in the certificate file)."""
    cert_name, key_name = f"{prefix}_cert", f"{prefix}_key"
    _check_certificates(cert_name, cert)
    key_path, key_setting = (key, key_name) if key else (cert, cert_name)
    if b"PRIVATE KEY-----" not in _read(key_setting, key_path):
        where = f"{key_name} {key}" if key else f"{cert_name} {cert} (no {key_name} given)"
        raise ConfigError(f"{where}: no PEM private key in it")

    def encrypted() -> bytes:
        raise ConfigError(f"{key_setting} {key_path}: the key is encrypted; give it unencrypted")

    try:
        context.load_cert_chain(cert, key, password=encrypted)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ConfigError(
                f"{key_setting} {key_path}: the key does not match the certificate in {cert}"
            ) from None
        raise ConfigError(
            f"{key_setting} {key_path}: not a usable PEM private key ({_reason(exc)})"
        ) from None


def _check_certificates(setting: str, path: str) -> None:
    """The file holds PEM certificates that parse (a key may sit beside them)."""
    text = _read(setting, path).decode("ascii", "replace")
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(f"{setting} {path}: no PEM certificate in it")
    try:
        ssl.create_default_context(cadata=text)
    except ssl.SSLError as exc:
        reason = _reason(exc)
        raise ConfigError(f"{setting} {path}: not a valid PEM certificate ({reason})") from None


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's words without the ``[SSL]`` prefix and the ``(_ssl.c:NNNN)`` suffix."""
    text = exc.reason or (str(exc.args[1]) if len(exc.args) > 1 else str(exc))
    return "OpenSSL: " + re.sub(r"^\[\w+\]\s*|\s*\(_ssl\.c:\d+\)$", "", text)


def _load_ca(context: ssl.SSLContext, path: str) -> None:
    """A PEM file of CA certificates, or a directory of them (hashed names, c_rehash)."""
    try:
        if os.path.isdir(path):
            context.load_verify_locations(capath=path)
            return
        _check_certificates("tls_ca", path)
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ConfigError(f"tls_ca {path}: cannot be loaded ({_reason(exc)})") from None
