"""What the dev servers (HAPI FHIR, Keycloak) share to run as child processes on loopback.

Terms:

- *readiness probe*: a call that answers True once the server serves requests (an HTTP GET
  of a page that only answers 200 when it is up); :func:`wait_until_ready` calls it until it
  does, the process exits (an error with the end of its log), or the time is up.
- *stop*: SIGTERM, then SIGKILL after a grace period (:func:`stop`).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import requests

from ims_fhir.errors import ToolchainError

HOST = "127.0.0.1"
LOG_TAIL_LINES = 40


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def stop(process: subprocess.Popen[bytes], grace: float) -> int | None:
    """Ask the process to shut down (SIGTERM), kill it after ``grace`` seconds; its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_until_ready(process: subprocess.Popen[bytes], probe: Callable[[], bool], *, what: str, log_path: Path,
                     timeout: float, interval: float) -> None:
    """Call ``probe`` until it answers True (see the terms); a ToolchainError naming ``what`` and
    quoting the end of its log when the process exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        code = process.poll()
        if code is not None:
            raise ToolchainError(f"{what} exited with code {code} while starting; log {log_path} ends with:\n"
                                 f"{log_tail(log_path)}")
        try:
            if probe():
                return
        except requests.RequestException:
            pass  # not listening yet
        if time.monotonic() >= deadline:
            raise ToolchainError(f"{what} was not ready within {timeout:.0f} s; log {log_path} ends with:\n"
                                 f"{log_tail(log_path)}")
        time.sleep(interval)


__all__ = ["HOST", "LOG_TAIL_LINES", "free_port", "log_tail", "stop", "wait_until_ready"]
