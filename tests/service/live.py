"""A real ``ims-fhir serve`` in a subprocess for tests that need waitress itself (loopback only).

The helpers to start one (:func:`free_port`, :func:`toml`, :func:`start`, :func:`wait_healthy`,
:func:`stop`) are the ones every test and benchmark that runs ``ims-fhir serve`` or ``worker``
as a process uses (the crash and chaos tests, ``benchmarks/service.py``).

:func:`running_service` writes the TOML configuration, starts the service with the worker
off (no FHIR server is contacted), waits for ``/health`` and stops it (SIGTERM, then
SIGKILL) afterwards; the service's log is kept in ``test-artifacts/``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import requests

from ims_fhir.dev.process import stop as stop_process

from .conftest import service_settings
from .support import artifacts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml(data: dict[str, Any]) -> str:
    """Enough TOML for the service's configuration (tables, arrays of tables, scalars)."""

    def value(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else orjson.dumps(v).decode()

    lines = []
    for key, section in data.items():
        for table in section if isinstance(section, list) else [section]:
            lines.append(f"[[{key}]]" if isinstance(section, list) else f"[{key}]")
            lines += [f"{k} = {value(v)}" for k, v in table.items()]
            lines.append("")
    return "\n".join(lines)


@dataclass
class Live:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    storage: Path


def start(config: Path, log: Path, command: str = "serve", *,
          extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``ims-fhir serve`` (or ``worker``) with ``config``, its output appended to ``log``; the
    environment's ``IMS_FHIR_*`` settings left out, so that only the file configures it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMS_FHIR_")}
    env.update(extra_env or {})
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "ims_fhir", command, "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ims-fhir serve exited with {proc.returncode}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError("ims-fhir serve did not come up")


def stop(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    stop_process(proc, grace)


@contextmanager
def running_service(tmp_path: Path, name: str, *, server: dict[str, Any] | None = None,
                    worker: dict[str, Any] | None = None, **sections: Any) -> Iterator[Live]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    data = service_settings(tmp_path, server={"host": "127.0.0.1", "port": port, **(server or {})},
                            worker={"enabled": False, **(worker or {})}, **sections)
    config = tmp_path / f"{name}.toml"
    config.write_text(toml(data), encoding="utf-8")
    log = artifacts() / f"{name}.log"
    log.write_bytes(b"")
    proc = start(config, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield Live(url, port, proc, log, Path(str(data["storage"]["url"])[len("sqlite:///"):]))
    finally:
        stop(proc)
