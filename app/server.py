"""The program: builds the SIP service, its store, the MI and the collector policy, runs them
in one event loop until a signal, and stops them in order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

from engine.proxy import VERSION

from .config import Settings
from .sip.service import SipService
from .store.persistence import open_persistence
from .tls import TlsContexts, load_tls

log = logging.getLogger("sipdlg")


async def run(
    settings: Settings, ready: asyncio.Event | None = None, tls: TlsContexts | None = None
) -> None:
    """Run until SIGTERM/SIGINT.  ``tls``: the contexts the command line loaded and checked
    before this (loaded here if not)."""
    tls = tls if tls is not None else load_tls(settings)
    service = SipService(settings, tls=tls)
    service.db = open_persistence(settings, service.engine)  # DbError: refuse to start
    try:
        await service.start()
    except BaseException:
        if service.db is not None:
            service.db.store.close()
        raise
    mi_runner: Any = None
    address = settings.mi_address()
    if address is None:
        log.info("MI disabled (--mi-listen none)")
    else:
        from .mi import http as mi

        host, port = address
        mi.check_mi_exposure(host, settings.mi_token, settings.mi_allow)
        mi_runner = await mi.start_mi(
            service,
            host,
            port,
            token=settings.mi_token,
            allow=settings.mi_allow or None,
            max_body=settings.mi_max_body,
            extend=service.lifecycle.extend_app,
            ssl_context=tls.mi,
        )
        scheme = "https" if tls.mi is not None else "http"
        log.info("MI on %s://%s:%s/mi", scheme, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    # Short collector pauses however many calls are up (app/gc_policy.py).
    service.gc.install()
    service.gc.start()
    log.info("sipdlg %s started", VERSION)
    await stop.wait()
    log.info("shutting down: no new dialogs, saving the dialogs, closing")
    service.drain()  # new INVITEs get 503 from here on, /health says 503

    def exit_now() -> None:
        log.warning("second signal: exiting at once")
        os._exit(1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, exit_now)
    service.flush()
    if service.db is not None:
        await service.db.settle()  # the last commits, and the messages waiting for them
    if mi_runner is not None:
        await mi_runner.cleanup()
    await service.stop()
    service.gc.stop()
    if service.db is not None:
        service.db.close()
