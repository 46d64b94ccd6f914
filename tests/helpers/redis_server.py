"""A real ``redis-server`` (Debian's package) for the tests: its own port on 127.0.0.1, its
own directory, append-only file on, started and stopped by the test."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from .ports import LOOPBACK, free_port


def redis_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port("tcp")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = workdir / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> RedisServer:
        binary = redis_binary()
        assert binary is not None, "redis-server not installed"
        data = self.workdir / f"redis-{self.port}"
        data.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    binary, "--port", str(self.port), "--bind", LOOPBACK, "--dir", str(data),
                    "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                    "--protected-mode", "yes",
                ],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        client = redis.Redis(host=LOOPBACK, port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"redis-server did not start: {self.log_file}") from None
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
