"""Run the real ``sipdlg serve`` as a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from .ports import LOOPBACK, free_port, wait_tcp

REPO_ROOT = Path(__file__).resolve().parents[2]


class SipdlgStartError(AssertionError):
    pass


def _opt_name(key: str) -> str:
    return "--" + key.replace("_", "-")


class SipdlgProcess:
    """One ``python -m app.cli serve`` process listening on 127.0.0.1.

    * SIP: ``udp:127.0.0.1:<port>`` and ``tcp:127.0.0.1:<port>`` (one free port
      for both, unless ``port`` is given).
    * next hop: ``next_hop`` (``[proto:]host:port``, or a list of them) or
      ``127.0.0.1:<uas_port>``.  ``listen``: other sockets than those two.
    * MI: ``mi=True`` → a free port, passed as ``--mi-listen 127.0.0.1:<mi>``;
      ``mi="IP:PORT"`` → passed verbatim; ``mi=False`` → ``--mi-listen none``
      option and no MI readiness check.
    * ``opts``: further CLI options, ``hash_size=16`` → ``--hash-size 16``;
      ``True`` → bare flag; a list → repeated option; ``None``/``False`` skipped.
    * ``extra_args``: appended verbatim. ``env``: added to the environment
      (e.g. ``SIPDLG_*`` settings).
    * ``--data-dir`` defaults to ``<workdir>/<name>-<port>.data``: the default
      SQLite dialog store is locked per server, so each process gets its own,
      inside the test's tmp_path (never the repo). Not added when ``db`` or
      ``data_dir`` is given (as opts, in ``extra_args`` or as ``SIPDLG_DB`` /
      ``SIPDLG_DATA_DIR`` in ``env``). Pass ``db=...`` to share a store between
      a server and its restart.

    Readiness: the TCP SIP port and (if any) the MI port accept connections,
    within ``ready_timeout`` seconds. stdout+stderr go to ``log_file``.
    Stop: SIGTERM, SIGKILL after ``stop_timeout`` seconds.
    """

    def __init__(
        self,
        workdir: Path | str,
        *,
        uas_port: int | None = None,
        next_hop: str | Sequence[str] | None = None,
        port: int | None = None,
        listen: Sequence[str] | None = None,
        mi: bool | str = True,
        ready_timeout: float = 15.0,
        stop_timeout: float = 5.0,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        name: str = "sipdlg",
        **opts: object,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port if port is not None else free_port("both")
        if next_hop is None:
            if uas_port is None:
                uas_port = free_port("both")
            next_hop = f"{LOOPBACK}:{uas_port}"
        self.uas_port = uas_port
        self.next_hop = [next_hop] if isinstance(next_hop, str) else list(next_hop)
        self.listen = (
            list(listen)
            if listen is not None
            else [
                f"udp:{LOOPBACK}:{self.port}",
                f"tcp:{LOOPBACK}:{self.port}",
            ]
        )
        #: With its own sockets the server is ready once its MI answers (bound after them).
        self.check_sip_port = listen is None
        self.mi_port: int | None = None
        self.mi_listen: str | None = None
        if mi is True:
            self.mi_port = free_port("tcp")
            self.mi_listen = f"{LOOPBACK}:{self.mi_port}"
        elif isinstance(mi, str) and mi:
            self.mi_listen = mi
            host, _, p = mi.rpartition(":")
            if p.isdigit() and host:
                self.mi_port = int(p)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = list(extra_args)
        self.opts = opts
        self.env = dict(env or {})
        self.name = name
        self.log_file = self.workdir / f"{name}-{self.port}.log"
        given = set(opts) | {
            a.split("=", 1)[0].lstrip("-").replace("-", "_")
            for a in self.extra_args
            if a.startswith("--")
        }
        self.data_dir: Path | None = None
        if not given & {"db", "data_dir"} and not {"SIPDLG_DB", "SIPDLG_DATA_DIR"} & set(self.env):
            self.data_dir = self.workdir / f"{name}-{self.port}.data"
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    # ---------------------------------------------------------- addresses

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def sip_address(self) -> str:
        """``127.0.0.1:<port>`` — what a SIPp UAC targets."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def mi_url(self) -> str:
        """``http://127.0.0.1:<mi>/mi`` (OpenSIPS mi_http root)."""
        if self.mi_listen is None:
            raise RuntimeError("sipdlg started without an MI listener (mi=False)")
        return f"http://{self.mi_listen}/mi"

    @property
    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
        ]
        for socket in self.listen:
            cmd += ["--listen", socket]
        for hop in self.next_hop:
            cmd += ["--next-hop", hop]
        cmd += ["--mi-listen", self.mi_listen if self.mi_listen is not None else "none"]
        opts = dict(self.opts)
        if self.data_dir is not None:
            opts["data_dir"] = str(self.data_dir)
        for key, value in opts.items():
            if value is None or value is False:
                continue
            if value is True:
                cmd.append(_opt_name(key))
            elif isinstance(value, list | tuple):
                for v in value:
                    cmd += [_opt_name(key), str(v)]
            else:
                cmd += [_opt_name(key), str(value)]
        return cmd + self.extra_args

    # ---------------------------------------------------------- lifecycle

    def start(self) -> SipdlgProcess:
        if self.proc is not None:
            raise RuntimeError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        # Make `python -m app.cli` importable even without an editable install.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (env.get("PYTHONPATH", ""), str(REPO_ROOT)) if p
        )
        env.update(self.env)
        cmd = self.command
        with open(self.log_file, "wb") as out:
            out.write(("$ " + " ".join(cmd) + "\n").encode())
            out.flush()
            # Not the repository: ``-m`` puts the working directory first on sys.path, and
            # the engine must come from wherever PYTHONPATH says (build/native for benchmarks
            # of the compiled engine); files the server writes stay in the test's folder.
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        targets = [("SIP/TCP", self.port)] if self.check_sip_port else []
        if self.mi_port is not None:
            targets.append(("MI", self.mi_port))
        for label, port in targets:
            while True:
                if self.proc.poll() is not None:
                    raise SipdlgStartError(
                        f"sipdlg exited with code {self.proc.returncode} before {label} "
                        f"port {port} was ready\n{self.log_tail()}"
                    )
                if wait_tcp(LOOPBACK, port, timeout=0.2):
                    break
                if time.monotonic() >= deadline:
                    raise SipdlgStartError(
                        f"sipdlg {label} port {port} not accepting connections after "
                        f"{self.ready_timeout}s\n{self.log_tail()}"
                    )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_timeout`` s. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.returncode = self.proc.returncode
        return self.returncode

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_text().splitlines()[-lines:]
        return f"--- tail of {self.log_file} ---\n" + "\n".join(text)

    def __enter__(self) -> SipdlgProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
