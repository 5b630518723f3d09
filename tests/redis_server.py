"""A throwaway ``redis-server`` for the tests: its own process, free ports, no persistence.

Readiness is read from the server's own log line ("Ready to accept connections"), not polled.
``AIGW_TEST_REDIS_URL`` points the suite at an existing Redis instead (tests that need to stop
or restart the server are then skipped).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

# First starts on ports taken meanwhile by something else, before giving up.
START_ATTEMPTS = 5


def unused_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports nothing is bound to right now (the kernel's picks for
    port 0). They are released before this returns: whoever binds one later must expect to
    find it taken, as :meth:`RedisServer.start` does."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class RedisServer:
    """One redis-server process on 127.0.0.1; ``start``/``stop`` may be repeated.

    Redis cannot be given port 0 (it means "no TCP listener") and report what it bound, so
    the first start picks ports that are free (``port``, and any other ``port_options``, such
    as ``--tls-port``), and picks again if redis-server finds one taken by the time it binds
    it. A later start reuses them: clients keep the URL. ``RuntimeError`` if the server does
    not come up.
    """

    def __init__(
        self, workdir: Path, *extra_args: str, port_options: tuple[str, ...] = ("--port",)
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (apt-get install redis-server), "
                "or set AIGW_TEST_REDIS_URL to a Redis the tests may write to"
            )
        self.binary = binary
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.ports = dict.fromkeys(port_options, 0)  # option -> port, 0 until the first start
        self.proc: subprocess.Popen[str] | None = None

    @property
    def port(self) -> int:
        return self.ports["--port"]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it is ready."""
        first = not any(self.ports.values())
        for _ in range(START_ATTEMPTS if first else 1):
            if first:
                self.ports = dict(zip(self.ports, unused_ports(len(self.ports)), strict=True))
            failure = self._launch()
            if failure is None:
                return
            if not (first and "Address already in use" in failure):
                break
        raise RuntimeError(f"redis-server did not start on {self.ports}:\n{failure}")

    def _launch(self) -> str | None:
        """Run redis-server until it is ready; or, if it exits first, the end of its output."""
        listen = [arg for option, port in self.ports.items() for arg in (option, str(port))]
        self.proc = subprocess.Popen(
            [
                self.binary,
                *listen,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra_args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        seen = []
        for line in self.proc.stdout:  # blocks until the server says it is ready or exits
            seen.append(line)
            if "Ready to accept connections" in line:
                return None
        self.stop()
        return "".join(seen[-20:])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
