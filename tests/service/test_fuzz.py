"""Fuzzing the service with hypothesis: hostile bodies, paths, headers and form posts.

Against the app through Flask's test client (the bulk: more than 10,000 generated requests
per run, derandomized so CI sees the same ones every time) and a smaller sample against a
running ``ims-fhir serve`` (waitress in front, raw malformed HTTP too). Every answer must:

- never be a 5xx (``/ready`` may say 503 "not ready": its target is unreachable on purpose),
- never carry a traceback,
- be an OperationOutcome when it is an error of an API route,
- store nothing for a refused ``POST /records`` (a 422 stores at most the records it lists
  as accepted),

and the service must be healthy after each test (``/health``, a valid post still accepted,
the outbox passes ``PRAGMA quick_check``). Each test checks its own share of the requests
(the shares add up to more than 10,000), whatever process pytest-xdist runs it in.
The figures (requests sent, time) go to ``test-artifacts/fuzz.txt``.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from ims_fhir.records import vocabulary as v
from ims_fhir_service import create_app
from ims_fhir_service.auth import hash_token
from ims_fhir_service.config import config_from_mapping
from tests.conftest import EXAMPLES

from .conftest import RO_TOKEN, RW_TOKEN, service_settings
from .live import running_service
from .support import artifacts

TARGET = "hospital-fz7q"  # a name the generators never produce, so no pull reaches the (unreachable) target
SCALE = float(os.environ.get("IMS_FHIR_FUZZ_SCALE", "1"))  # e.g. 0.05 for a quick local look; CI runs 1
FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
COUNTS: dict[str, int] = {}


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=max(1, int(examples * SCALE)))
DASHBOARD_PREFIXES = ("/ui/", "/login", "/logout", "/static/")

# -- the app under test -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    tmp = tmp_path_factory.mktemp("fuzz")
    data = service_settings(tmp, server={"max_body_bytes": 64 * 1024, "login_attempts_per_minute": 10**9},
                            targets=[{"name": TARGET, "base_url": "http://127.0.0.1:9/fhir", "timeout": 2,
                                      "retry_budget": 1, "max_attempts": 1}],
                            tokens=[{"name": "writer", "sha256": hash_token(RW_TOKEN), "scope": "read-write"},
                                    {"name": "reader", "sha256": hash_token(RO_TOKEN), "scope": "read"}])
    app = create_app(config_from_mapping(data, environ={}))
    yield app
    for reader in _READERS.values():
        reader.close()
    _READERS.clear()
    app.extensions["ims_fhir"].outbox.close()
    total = sum(COUNTS.values())
    lines = [f"{name}: {n} requests" for name, n in sorted(COUNTS.items())] + [f"total (test client): {total}"]
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    (artifacts() / f"fuzz{'-' + worker if worker else ''}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def web(fuzz_app: Flask) -> FlaskClient:
    return fuzz_app.test_client()


_READERS: dict[str, sqlite3.Connection] = {}


def _records(app: Flask) -> int:
    path = app.extensions["ims_fhir"].outbox.path
    if path not in _READERS:
        _READERS[path] = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                         check_same_thread=False)
    return int(_READERS[path].execute("SELECT COUNT(*) FROM record").fetchone()[0])


def healthy_after(app: Flask, name: str, minimum: int) -> None:
    """After a test's requests: it sent at least ``minimum`` (scaled), and the service still works.

    Each test checks its own share (the shares add up to more than 10,000), so the suite
    holds however pytest-xdist spreads the tests over processes."""
    assert COUNTS.get(name, 0) >= minimum * SCALE, (name, COUNTS)
    web = app.test_client()
    assert web.get("/health").status_code == 200
    key = f"FZ-OK-{name}"
    answer = web.post("/records", json={**BASE_RECORDS["patient"], "id": key}, headers=_auth("rw"))
    assert answer.status_code in (202,), answer.get_data(as_text=True)[:300]
    assert web.get(f"/records/patient/{key}", headers=_auth("ro")).status_code == 200
    assert web.get("/ready").json["checks"]["storage"] == "ok"  # the outbox passes quick_check


def _api(path: str) -> bool:
    return path != "/" and not path.startswith(DASHBOARD_PREFIXES)


def check(answer: TestResponse, path: str, name: str) -> None:
    """The rules every answer obeys (see the module docstring)."""
    COUNTS[name] = COUNTS.get(name, 0) + 1
    status = answer.status_code
    body = answer.get_data()
    assert status < 500 or (status == 503 and path.startswith("/ready")), (status, path, body[:300])
    assert b"Traceback" not in body and b'File "' not in body, (path, body[:300])
    if status >= 400 and _api(path) and path not in ("/ready", "/health") and answer.request.method != "HEAD":
        doc = orjson.loads(body)
        assert doc["resourceType"] == "OperationOutcome" and doc["issue"], (path, body[:300])
        assert len(body) < 300_000


# -- generators ---------------------------------------------------------------------------------

_BASE = [orjson.loads(line) for line in (EXAMPLES / "records.ndjson").read_bytes().splitlines()[:40] if line.strip()]
BASE_RECORDS = {rtype: next(r for r in _BASE if r["record_type"] == rtype) for rtype in v.RECORD_TYPES}

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=10), inner, max_size=4), max_leaves=8)
hostile_strings = st.one_of(
    st.sampled_from(["", " ", "\x00", "\r\n", "\u202e", "../../etc/passwd", "a/b", "%2F", "..", ".", "<script>",
                     "0001-01-01T00:00:00Z", "9999-12-31", "9999-12-31T23:59:59+14:00", "1899-12-31",
                     "2025-02-30", "2025-03-04T25:00:00Z", "NaN", "-0", "1e309", "\ud7ff", "🦀" * 10]),
    st.text(max_size=80),
    st.integers(min_value=100, max_value=20000).map(lambda n: "A" * n))


@st.composite
def mutated_record(draw: Any) -> dict[str, Any]:
    rec = dict(BASE_RECORDS[draw(st.sampled_from(v.RECORD_TYPES))])
    rec["id"] = draw(st.one_of(st.just(rec["id"]) , hostile_strings, st.from_regex(r"FZ[0-9]{1,6}", fullmatch=True)))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["set", "string", "drop", "extra", "type"]))
        key = draw(st.sampled_from(sorted(rec)))
        if action == "set":
            rec[key] = draw(json_values)
        elif action == "string":
            rec[key] = draw(hostile_strings)
        elif action == "drop" and key != "record_type":
            rec.pop(key)
        elif action == "extra":
            rec[draw(st.text(min_size=1, max_size=20))] = draw(json_values)
        elif action == "type":
            rec["record_type"] = draw(st.one_of(st.sampled_from(v.RECORD_TYPES), hostile_strings))
    return rec


def _ndjson(items: list[Any]) -> bytes:
    return b"\n".join(orjson.dumps(i) for i in items)


@st.composite
def bodies(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["record", "array", "ndjson", "document", "json", "bytes", "dup", "deep", "text",
                                 "empties", "bignum"]))
    if kind == "record":
        return orjson.dumps(draw(mutated_record()))
    if kind == "array":
        return orjson.dumps(draw(st.lists(mutated_record(), max_size=5)))
    if kind == "ndjson":
        lines = [orjson.dumps(r) for r in draw(st.lists(mutated_record(), min_size=1, max_size=5))]
        junk = draw(st.lists(st.binary(max_size=30), max_size=2))
        return b"\n".join(lines + junk)
    if kind == "document":
        doc: dict[str, Any] = {"format": draw(st.sampled_from([v.FORMAT, "ims-record/2", 1, None]))}
        if draw(st.booleans()):
            doc["source"] = draw(st.one_of(json_values, st.just({"clinic_id": "x", "system_base": "urn:x"})))
        for key in draw(st.lists(st.sampled_from([*v.LIST_KEYS.values(), "extras"]), max_size=3)):
            doc[key] = draw(st.one_of(st.lists(mutated_record(), max_size=3), json_values))
        return orjson.dumps(doc)
    if kind == "json":
        return orjson.dumps(draw(json_values))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "dup":
        key = draw(st.sampled_from(["id", "family_name", "record_type", "x"]))
        return (b'{"record_type": "patient", "id": "FZD1", "family_name": "A", "%s": 1, "%s": 2}'
                % (key.encode(), key.encode()))
    if kind == "deep":
        depth = draw(st.integers(100, 2000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'{"a":1,"a":', b"}")]))
        return opener * depth + b"1" + closer * depth
    if kind == "bignum":
        digits = b"9" * draw(st.integers(20, 5000))
        return b'{"record_type": "treatment", "id": "FZB", "session_number": %s, "pain_before_nrs": 1e%s}' % (
            digits, digits[:4])
    if kind == "empties":
        return b"[" + b",".join([b"{}"] * draw(st.integers(1, 400))) + b"]"
    return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")


auths = st.sampled_from(["rw", "ro", "none", "garbage", "basic", "empty"])
content_types = st.sampled_from(["application/json", "application/x-ndjson", "application/ndjson",
                                 "application/json; charset=utf-8", "text/plain", "application/xml", "",
                                 "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
                                 "application/json; charset=latin-1", "*/*", "application/fhir+json"])


def _auth(kind: str, token: str = "") -> dict[str, str]:
    return {"rw": {"Authorization": f"Bearer {RW_TOKEN}"}, "ro": {"Authorization": f"Bearer {RO_TOKEN}"},
            "none": {}, "garbage": {"Authorization": f"Bearer {token or 'x'}"},
            "basic": {"Authorization": "Basic dXNlcjpwYXNz"}, "empty": {"Authorization": "Bearer "}}[kind]


segment_chars = st.one_of(st.sampled_from(list("abcXYZ019-_.~!$&'()*+,;=:@")),
                          st.integers(0, 255).map(lambda b: f"%{b:02X}"))
segments = st.one_of(st.lists(segment_chars, min_size=0, max_size=20).map("".join), st.sampled_from(
    ["patient", "treatment", "assessment", "practitioner", "P000001", "..", ".", "%2e%2e", "x" * 3000]))
ROUTES = ["/records", "/records/{a}/{b}", "/records/{a}/{b}/retry", "/retry", "/pull", "/metrics", "/openapi.json",
          "/health", "/ready", "/", "/login", "/logout", "/ui/lookup", "/ui/records/{a}/{b}",
          "/ui/records/{a}/{b}/retry", "/ui/retry-dead", "/static/{a}", "/{a}", "/{a}/{b}/{a}"]
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])


@st.composite
def paths(draw: Any) -> str:
    route = draw(st.sampled_from(ROUTES))
    path = route.format(a=draw(segments), b=draw(segments))
    if draw(st.booleans()):
        path += "?" + "&".join(f"{draw(segments)}={draw(segments)}" for _ in range(draw(st.integers(1, 3))))
    return path


header_names = st.sampled_from(["Authorization", "Content-Type", "Cookie", "X-Forwarded-For", "X-Forwarded-Proto",
                                "X-CSRF-Token", "Accept", "Content-Encoding", "Transfer-Encoding", "Range",
                                "If-Match", "X-Requested-With", "Origin", "Referer", "Accept-Encoding"])
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xff, exclude_characters="\x7f"),
                        max_size=200)


# -- test-client fuzzing ------------------------------------------------------------------------


@fuzz(500)
@given(body=bodies(), auth=auths, content_type=content_types, cut=st.integers(0, 10**6))
def _fuzz_post_records(fuzz_app: Flask, web: FlaskClient, body: bytes, auth: str, content_type: str,
                           cut: int) -> None:
    # each generated body goes in four ways: as drawn, as JSON and as NDJSON with a write token, and cut short
    variants = [({**_auth(auth), **({"Content-Type": content_type} if content_type else {})}, body),
                ({**_auth("rw"), "Content-Type": "application/json"}, body),
                ({**_auth("rw"), "Content-Type": "application/x-ndjson"}, body.replace(b"},{", b"}\n{")),
                ({**_auth("rw"), "Content-Type": "application/json"}, body[:cut % (len(body) + 1)])]
    for headers, data in variants:
        before = _records(fuzz_app)
        answer = web.post("/records", data=data, headers=headers)
        check(answer, "/records", "post_records")
        added = _records(fuzz_app) - before
        if answer.status_code == 202:
            assert answer.json is not None and added <= answer.json["accepted"]
        elif answer.status_code == 422:
            accepted = [i for i in answer.json["issue"]
                        if i["severity"] == "information" and "accepted" in i["diagnostics"]]
            assert added <= len(accepted)
        else:
            assert added == 0, (answer.status_code, data[:200])

def test_fuzz_post_records(fuzz_app: Flask, web: FlaskClient) -> None:
    _fuzz_post_records(fuzz_app=fuzz_app, web=web)
    healthy_after(fuzz_app, "post_records", 2000)


@fuzz(800)
@given(method=methods, path=paths(), auth=auths, body=st.binary(max_size=100))
def _fuzz_paths_and_methods(fuzz_app: Flask, web: FlaskClient, method: str, path: str, auth: str,
                                body: bytes) -> None:
    # the drawn request, then the same path with every method and the other credentials
    bare = path.split("?")[0]
    stores = bare == "/records"  # only POST /records stores records
    tries = [(method, {**_auth(auth), "Content-Type": "application/json"}, body)]
    tries += [(verb, _auth(who), b"") for verb, who in zip(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"],
                                                           ["rw", "ro", "none", "rw", "garbage", "rw", "ro"], strict=True)]
    # PATH_INFO as a server gives it (a path such as //../ would be read as a host by the test client's URL parsing)
    raw_path, _, query = path.partition("?")
    environ = {"PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1"), "QUERY_STRING": query}
    for verb, headers, data in tries:
        before = _records(fuzz_app)
        answer = web.open("/", method=verb, data=data, headers=headers, environ_overrides=environ)
        check(answer, bare, "paths_and_methods")
        if not stores:
            assert _records(fuzz_app) == before

def test_fuzz_paths_and_methods(fuzz_app: Flask, web: FlaskClient) -> None:
    _fuzz_paths_and_methods(fuzz_app=fuzz_app, web=web)
    healthy_after(fuzz_app, "paths_and_methods", 6400)


@fuzz(600)
@given(path=st.sampled_from(["/records", "/records/patient/P000001", "/metrics", "/ready", "/pull", "/retry",
                             "/openapi.json", "/", "/ui/lookup"]),
       method=st.sampled_from(["GET", "POST"]),
       headers=st.dictionaries(header_names, header_values, max_size=5), body=st.binary(max_size=100))
def _fuzz_headers(fuzz_app: Flask, web: FlaskClient, path: str, method: str, headers: dict[str, str],
                      body: bytes) -> None:
    for verb in (method, "GET" if method == "POST" else "POST"):
        before = _records(fuzz_app)
        try:
            answer = web.open(path, method=verb, data=body, headers=headers)
        except (ValueError, UnicodeError):
            continue  # the test client itself refuses such a header; a real server answers 400 (fuzzed live below)
        check(answer, path, "headers")
        if answer.status_code != 202:
            assert _records(fuzz_app) == before


form_values = st.one_of(hostile_strings, st.sampled_from([RW_TOKEN, RO_TOKEN, "/", "/ui/records/patient/P1",
                                                           "//evil.example", "/\t/evil.example", "/\\evil"]))

def test_fuzz_headers(fuzz_app: Flask, web: FlaskClient) -> None:
    _fuzz_headers(fuzz_app=fuzz_app, web=web)
    healthy_after(fuzz_app, "headers", 900)


@fuzz(500)
@given(action=st.sampled_from(["login", "retry", "retry_dead", "logout", "lookup", "record"]),
       form=st.dictionaries(st.sampled_from(["token", "next", "back", "csrf", "target", "record_type", "record_id",
                                             "x"]), form_values, max_size=5),
       rtype=segments, rid=segments, logged_in=st.booleans(), good_csrf=st.booleans())
def _fuzz_dashboard_forms(fuzz_app: Flask, action: str, form: dict[str, str], rtype: str, rid: str,
                              logged_in: bool, good_csrf: bool) -> None:
    browser = fuzz_app.test_client()
    if logged_in:
        login = browser.post("/login", data={"token": RW_TOKEN})
        check(login, "/login", "dashboard_forms")
        if good_csrf:
            with browser.session_transaction() as session:
                form = {**form, "csrf": session.get("csrf", "")}
    path = {"login": "/login", "retry": f"/ui/records/{rtype}/{rid}/retry", "retry_dead": "/ui/retry-dead",
            "logout": "/logout", "lookup": "/ui/lookup", "record": f"/ui/records/{rtype}/{rid}"}[action]
    try:
        answer = browser.get(path, query_string=form) if action in ("lookup", "record") else browser.post(path, data=form)
    except (ValueError, UnicodeError):
        return
    check(answer, path, "dashboard_forms")
    location = answer.headers.get("Location", "")
    assert not location.startswith("//") and "\\" not in location and "://" not in location, location
    assert not any(ord(c) < 0x20 for c in location)

def test_fuzz_dashboard_forms(fuzz_app: Flask) -> None:
    _fuzz_dashboard_forms(fuzz_app=fuzz_app)
    healthy_after(fuzz_app, "dashboard_forms", 500)


@fuzz(350)
@given(params=st.dictionaries(st.sampled_from(["target", "patient", "since", "x"]), json_values | hostile_strings,
                              max_size=4),
       where=st.sampled_from(["json", "query", "form"]), state=st.one_of(st.none(), hostile_strings,
                                                                          st.sampled_from(["dead", "failed"])))
def _fuzz_pull_and_retry_parameters(fuzz_app: Flask, web: FlaskClient, params: dict[str, Any], where: str,
                                        state: str | None) -> None:
    headers = _auth("rw")
    try:
        if where == "json":
            answer = web.post("/pull", json=params, headers=headers)
        elif where == "query":
            answer = web.post("/pull", query_string={k: str(val) for k, val in params.items()}, headers=headers)
        else:
            answer = web.post("/pull", data={k: str(val) for k, val in params.items()}, headers=headers)
    except (ValueError, UnicodeError):
        return
    check(answer, "/pull", "pull_and_retry")
    assert answer.status_code != 200  # the target is never named, so nothing is ever pulled
    query = {"state": state} if state is not None else {}
    if isinstance(params.get("target"), str):
        query["target"] = params["target"]
    try:
        retried = web.post("/retry", query_string=query, headers=headers)
    except (ValueError, UnicodeError):
        return
    check(retried, "/retry", "pull_and_retry")

def test_fuzz_pull_and_retry_parameters(fuzz_app: Flask, web: FlaskClient) -> None:
    _fuzz_pull_and_retry_parameters(fuzz_app=fuzz_app, web=web)
    healthy_after(fuzz_app, "pull_and_retry", 300)


# -- against a running ims-fhir serve -----------------------------------------------------------


RAW_REQUESTS = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.builds(lambda m, p, h: b"%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % (m, p, h),
              st.sampled_from([b"GET", b"POST", b"BREW", b"G\x00T", b""]),
              st.binary(min_size=0, max_size=80).map(lambda b: b"/" + b.replace(b" ", b"")),
              st.binary(max_size=120)),
    st.builds(lambda n: b"POST /records HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\nabc" % n,
              st.sampled_from([b"-1", b"abc", b"99999999999999999999", b"1, 2", b""])),
    st.just(b"POST /records HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
    st.just(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n"),
)


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def test_fuzz_a_running_serve(tmp_path: Path) -> None:
    sent = {"n": 0}
    started = time.monotonic()
    with running_service(tmp_path, "serve-fuzz", server={"login_attempts_per_minute": 10**9}) as live:
        http = requests.Session()

        @fuzz(150)
        @given(body=bodies(), auth=auths, content_type=content_types, path=paths(), method=methods)
        def over_http(body: bytes, auth: str, content_type: str, path: str, method: str) -> None:
            headers = {**_auth(auth), **({"Content-Type": content_type} if content_type else {})}
            for verb, where, data in (("POST", "/records", body), (method, path, body[:200])):
                answer = http.request(verb, live.url + where, data=data, headers=headers, timeout=30,
                                      allow_redirects=False)
                sent["n"] += 1
                bare = where.split("?")[0]
                assert answer.status_code < 500 or (answer.status_code == 503 and bare == "/ready"), \
                    (verb, where, answer.status_code, answer.text[:300])
                assert "Traceback" not in answer.text
                if answer.status_code >= 400 and _api(bare) and bare != "/ready" and verb != "HEAD":
                    assert answer.json()["resourceType"] == "OperationOutcome", answer.text[:300]

        @fuzz(60)
        @given(raw=RAW_REQUESTS)
        def over_sockets(raw: bytes) -> None:
            reply = _raw(live.port, raw)
            sent["n"] += 1
            if reply:
                status_line = reply.split(b"\r\n", 1)[0]
                parts = status_line.split(b" ")
                assert len(parts) >= 2 and parts[0].startswith(b"HTTP/1."), status_line[:100]
                assert not parts[1].startswith(b"5"), reply[:300]
                assert b"Traceback" not in reply
                if parts[1] not in (b"200", b"302", b"202") and b"\r\n\r\n" in reply:
                    head, _, payload = reply.partition(b"\r\n\r\n")
                    if b"fhir+json" in head or b"application/json" in head:
                        assert b"OperationOutcome" in payload

        over_http()
        over_sockets()
        assert requests.get(f"{live.url}/health", timeout=5).status_code == 200
        ok = requests.post(f"{live.url}/records", data=orjson.dumps({**BASE_RECORDS["patient"], "id": "FZ-LIVE"}),
                           headers={**_auth("rw"), "Content-Type": "application/json"}, timeout=30)
        assert ok.status_code == 202
        assert live.process.poll() is None
    log = live.log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log and "internal error" not in log
    (artifacts() / "fuzz-live.txt").write_text(f"live: {sent['n']} requests in {time.monotonic() - started:.1f} s\n",
                                              encoding="utf-8")
    assert sent["n"] >= 300 * SCALE
