"""Findings of issue 13 that only the real server shows: ``ims-fhir serve`` (waitress) in a subprocess.

- 300 connections that send half a request header must not starve ``/health``;
  an idle half-sent connection is closed after ``channel_timeout``.
- a chunked body over the limit is refused by waitress itself: as an OperationOutcome.
- behind a trusted reverse proxy, ``X-Forwarded-Proto: https`` marks the cookie Secure;
  from anyone else the header is ignored.
- an empty or damaged outbox file stops ``serve`` at start with one clear line.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from .conftest import RW_TOKEN, service_settings
from .live import running_service, toml
from .support import artifacts


def _half_open(port: int, n: int) -> list[socket.socket]:
    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never finished
        held.append(s)
    return held


def test_health_answers_while_300_half_open_connections_are_held(tmp_path: Path) -> None:
    with running_service(tmp_path, "serve-half-open") as live:
        held = _half_open(live.port, 300)
        try:
            time.sleep(0.5)
            started = time.monotonic()
            answer = requests.get(f"{live.url}/health", timeout=5)
            assert answer.status_code == 200 and answer.json() == {"status": "ok"}
            assert time.monotonic() - started < 5
        finally:
            for s in held:
                s.close()


def test_an_idle_half_sent_connection_is_closed_after_channel_timeout(tmp_path: Path) -> None:
    with running_service(tmp_path, "serve-channel-timeout", server={"channel_timeout": 2, "cleanup_interval": 1}) as live:
        (s,) = _half_open(live.port, 1)
        s.settimeout(15)
        started = time.monotonic()
        try:
            data = s.recv(1024)  # the server closes it: b"" (or a reset)
        except ConnectionResetError:
            data = b""
        finally:
            s.close()
        assert data == b"" and time.monotonic() - started < 12


def test_a_chunked_body_over_the_limit_gets_an_operation_outcome(tmp_path: Path) -> None:
    # the app's limit is 256 kB (tests' default); waitress's own sits 1 MB above it
    with running_service(tmp_path, "serve-chunked-413") as live:
        conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
        conn.putrequest("POST", "/records")
        conn.putheader("Authorization", f"Bearer {RW_TOKEN}")
        conn.putheader("Content-Type", "application/x-ndjson")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        chunk = b"x" * 65536
        try:
            for _ in range(40):  # 2.5 MB
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the end
        answer = conn.getresponse()
        body = answer.read()
        conn.close()
        assert answer.status == 413
        assert answer.getheader("Content-Type", "").startswith("application/fhir+json")
        import json

        outcome = json.loads(body)
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "too-costly"


def test_a_chunked_body_over_the_app_limit_gets_an_operation_outcome_from_the_app(tmp_path: Path) -> None:
    with running_service(tmp_path, "serve-chunked-app-413") as live:
        body = iter([b"x" * 65536] * 6)  # 384 kB: over the app's 256 kB, under waitress's limit
        answer = requests.post(f"{live.url}/records", data=body, timeout=30,
                               headers={"Authorization": f"Bearer {RW_TOKEN}", "Content-Type": "application/x-ndjson"})
        assert answer.status_code == 413 and answer.json()["resourceType"] == "OperationOutcome"


def test_the_cookie_is_secure_behind_a_trusted_proxy_only(tmp_path: Path) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    with running_service(tmp_path / "a", "serve-untrusted-proxy") as live:
        answer = requests.post(f"{live.url}/login", data={"token": RW_TOKEN}, headers=forwarded,
                               allow_redirects=False, timeout=10)
        assert answer.status_code == 302 and "Secure" not in answer.headers["Set-Cookie"]
    with running_service(tmp_path / "b", "serve-trusted-proxy", server={"trusted_proxy": "127.0.0.1"}) as live:
        answer = requests.post(f"{live.url}/login", data={"token": RW_TOKEN}, headers=forwarded,
                               allow_redirects=False, timeout=10)
        assert answer.status_code == 302 and "; Secure" in answer.headers["Set-Cookie"]
        plain = requests.post(f"{live.url}/login", data={"token": RW_TOKEN}, allow_redirects=False, timeout=10)
        assert "Secure" not in plain.headers["Set-Cookie"]


def test_serve_refuses_an_empty_outbox_file_with_one_line(tmp_path: Path) -> None:
    data = service_settings(tmp_path, worker={"enabled": False})
    (tmp_path / "outbox.sqlite").write_bytes(b"")
    config = tmp_path / "serve.toml"
    config.write_text(toml(data), encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "ims_fhir", "serve", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    (artifacts() / "serve-empty-outbox.log").write_text(run.stderr, encoding="utf-8")
    assert run.returncode == 2
    assert "empty (0 bytes)" in run.stderr and "Traceback" not in run.stderr
    assert (tmp_path / "outbox.sqlite").stat().st_size == 0  # left as it was
