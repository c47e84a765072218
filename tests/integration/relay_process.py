"""Start `relay --hal none --listen 127.0.0.1:PORT` as a child process for a test, and always stop it.

Shared by the loopback pub/sub tests and the interop tests; the relay is a real subprocess so the tests exercise the
command users run, including its startup output (`listening on moqt://...`, `ca: PATH`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.support import REPO

STARTUP_TIMEOUT = 15.0


class LineReader:
    """Lines of a child's stdout, read by a thread: select() on a buffered pipe misses lines already buffered."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float) -> str | None:
        """The first line starting with `prefix`; None at EOF or timeout (everything read is in `seen`)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                self.lines.put(None)
                return None
            self.seen.append(line)
            if line.startswith(prefix):
                return line
        return None

    def rest(self, timeout: float = 5.0) -> str:
        """All of stdout once the child closed it (call after the child exited)."""
        self._thread.join(timeout)
        return self.text()

    def text(self) -> str:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self.lines.put(None)
                break
            self.seen.append(line)
        return "".join(self.seen)


@dataclass
class RelayProcess:
    proc: subprocess.Popen[str]
    host: str
    port: int
    ca: Path
    reader: LineReader

    @property
    def url(self) -> str:
        return f"moqt://{self.host}:{self.port}"

    def log(self) -> str:
        """Everything the relay printed so far, for an assertion message."""
        return self.reader.text()


def have_relay() -> bool:
    """The serving command and the session layer are part of this build."""
    return all(importlib.util.find_spec(m) is not None for m in ("relay.serve", "relay.moqt.session"))


RELAY_MISSING = "the relay (relay.serve and relay.moqt.session)"
INTEROP_PYTHON = REPO / ".venv-interop" / "bin" / "python"
AIOMOQT_MISSING = "the interop venv with aiomoqt 0.5.3 + qh3 (run `make interop-venv`)"


def have_aiomoqt() -> bool:
    """The independent peer's venv exists and imports (it is a separate interpreter: qh3<2 pins)."""
    if not INTEROP_PYTHON.exists():
        return False
    probe = subprocess.run([str(INTEROP_PYTHON), "-c", "import aiomoqt, qh3"], capture_output=True, timeout=30)
    return probe.returncode == 0


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def relay_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def running_relay(state_dir: Path, host: str = "127.0.0.1", extra: list[str] | None = None) -> Iterator[RelayProcess]:
    """Yield a started relay; stop it (SIGTERM, then SIGKILL) whatever happens in the test."""
    port = free_udp_port(host)
    state_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "relay.cli", "--hal", "none", "--listen", f"{host}:{port}", "--state-dir", str(state_dir), *(extra or [])]
    proc = subprocess.Popen(
        cmd,
        cwd=state_dir,
        env=relay_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert proc.stdout is not None
    reader = LineReader(proc.stdout)
    try:
        if reader.wait_for("listening on moqt://", STARTUP_TIMEOUT) is None:
            raise RuntimeError(f"relay not listening after {STARTUP_TIMEOUT} s:\n{reader.text()}")
        ca_line = reader.wait_for("ca: ", STARTUP_TIMEOUT)
        if ca_line is None:
            raise RuntimeError(f"relay printed no 'ca:' line:\n{reader.text()}")
        yield RelayProcess(proc, host, port, Path(ca_line[4:].strip()), reader)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[str]) -> None:
    """Stop a child we started, by its own handle (never by name)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()
