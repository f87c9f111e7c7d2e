"""Install and run a local Keycloak: the authorization server of the SMART tests.

The tests need a real OAuth2 authorization server that authenticates clients with a signed
JWT (``private_key_jwt``) and issues tokens with SMART system scopes. Keycloak does that
out of the box: the server distribution is the ``org.keycloak:keycloak-quarkus-dist`` zip
on Maven Central.

Terms
-----
distribution
    The unpacked zip, ``<cache root>/<version>/keycloak-<version>/`` (``bin/kc.sh``).
    Fetched once with Maven (``mvn dependency:get``, so it also lands in ``~/.m2``) and
    unpacked under a lock; about 165 MB to download and 200 MB unpacked.
cache root
    ``$IMS_FHIR_CACHE/keycloak`` if ``IMS_FHIR_CACHE`` is set, else ``~/.cache/ims-fhir/keycloak``.
dev mode
    ``kc.sh start-dev``: plain HTTP on 127.0.0.1, an in-memory database (``--db=dev-mem``,
    nothing written between runs), a bootstrap admin user from environment variables. The
    first start of a distribution also "augments" it (Quarkus build, ~1 min); starts take
    30-90 s on a loaded 2-core machine and about 500-700 MB of memory (heap capped at 512 MB).
realm
    A Keycloak tenant: its clients, client scopes and keys. The tests import theirs from
    ``tests/integration/keycloak/realm.json`` through the admin REST API
    (:meth:`KeycloakServer.import_realm`), with the JWKS of a key made at test time.

Keycloak 26 needs Java 21 or newer (the HAPI server runs on 17): :func:`find_java` looks at
``$KEYCLOAK_JAVA_HOME``, ``$JAVA_HOME``, ``java`` on PATH and ``/usr/lib/jvm/*``.

Command line: ``python -m ims_fhir.dev.keycloak install`` prints the distribution's path;
``python -m ims_fhir.dev.keycloak serve [--port N] [--realm FILE]`` runs it in the foreground.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from ims_fhir.dev.hapi import _exclusive_lock, _java_major
from ims_fhir.dev.process import HOST, free_port, wait_until_ready
from ims_fhir.dev.process import log_tail as _log_tail
from ims_fhir.dev.process import stop as stop_process
from ims_fhir.errors import ImsFhirError, ToolchainError

KEYCLOAK_VERSION = "26.5.6"
MIN_JAVA = 21
ADMIN_USER = "admin"
#: Heap for Keycloak in dev mode; enough for a realm or two and a few clients.
DEFAULT_HEAP = "-Xms64m -Xmx512m"
STOP_GRACE_SECONDS = 20.0


def default_cache_root() -> Path:
    """``$IMS_FHIR_CACHE/keycloak``, else ``~/.cache/ims-fhir/keycloak``."""
    base = os.environ.get("IMS_FHIR_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "ims-fhir"
    return root / "keycloak"


def find_java() -> str:
    """A ``java`` of version 21 or newer, or ToolchainError."""
    candidates: list[Path] = []
    for var in ("KEYCLOAK_JAVA_HOME", "JAVA_HOME"):
        home = os.environ.get(var)
        if home:
            candidates.append(Path(home) / "bin" / "java")
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path))
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        candidates.extend(sorted(jvm.glob("*/bin/java"), reverse=True))
    seen: set[Path] = set()
    for java in candidates:
        real = java.resolve()
        if real in seen or not real.is_file():
            continue
        seen.add(real)
        try:
            if _java_major(str(real)) >= MIN_JAVA:
                return str(real)
        except ToolchainError:
            continue
    raise ToolchainError(
        f"Keycloak needs Java {MIN_JAVA}+ but none was found (set KEYCLOAK_JAVA_HOME, or install e.g. openjdk-21-jdk)"
    )


def _maven_zip(version: str, maven_repo: Path | None) -> Path:
    repo = maven_repo or Path.home() / ".m2" / "repository"
    return repo / "org" / "keycloak" / "keycloak-quarkus-dist" / version / f"keycloak-quarkus-dist-{version}.zip"


def install(
    version: str = KEYCLOAK_VERSION, *, cache_root: Path | None = None, maven_repo: Path | None = None,
    log_path: Path | None = None,
) -> Path:
    """The unpacked distribution (fetched with Maven and unpacked on first use)."""
    root = cache_root or default_cache_root()
    home = root / version / f"keycloak-{version}"
    if (home / "bin" / "kc.sh").is_file():
        return home
    with _exclusive_lock(root / f"{version}.lock"):
        if (home / "bin" / "kc.sh").is_file():
            return home
        archive = _maven_zip(version, maven_repo)
        if not archive.is_file():
            mvn = shutil.which("mvn")
            if mvn is None:
                raise ToolchainError("Maven (mvn) is needed to fetch Keycloak from Maven Central but is not on PATH")
            command = [mvn, "-B", "-ntp", "-q", "dependency:get",
                       f"-Dartifact=org.keycloak:keycloak-quarkus-dist:{version}:zip", "-Dtransitive=false"]
            if maven_repo is not None:
                command.append(f"-Dmaven.repo.local={maven_repo}")
            log = log_path or root / f"{version}.fetch.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "wb") as out:
                proc = subprocess.run(command, stdout=out,  # noqa: S603 - mvn from PATH, fixed arguments stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      timeout=1800, check=False)
            if proc.returncode != 0 or not archive.is_file():
                raise ToolchainError(
                    f"fetching Keycloak {version} with Maven failed (exit {proc.returncode}); see {log}")
        scratch = Path(tempfile.mkdtemp(prefix=f"{version}.unpack-", dir=root))
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(scratch)
            unpacked = scratch / f"keycloak-{version}"
            for script in (unpacked / "bin").glob("*.sh"):
                script.chmod(0o755)
            home.parent.mkdir(parents=True, exist_ok=True)
            os.replace(unpacked, home)
        except (OSError, zipfile.BadZipFile) as exc:
            raise ToolchainError(f"unpacking {archive} failed: {exc}") from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return home


class KeycloakServer:
    """A running Keycloak (dev mode) with an admin client for its REST API."""

    def __init__(self, process: subprocess.Popen[bytes], *, port: int, log_path: Path, admin_password: str) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path
        self._admin_password = admin_password
        self.session = requests.Session()
        self.session.trust_env = False

    def __repr__(self) -> str:
        return f"<KeycloakServer {self.base_url} pid={self.process.pid}>"

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def issuer(self, realm: str) -> str:
        return f"{self.base_url}/realms/{realm}"

    def token_url(self, realm: str) -> str:
        return f"{self.issuer(realm)}/protocol/openid-connect/token"

    def jwks_url(self, realm: str) -> str:
        return f"{self.issuer(realm)}/protocol/openid-connect/certs"

    def log_tail(self, lines: int = 40) -> str:
        return _log_tail(self.log_path, lines)

    # -- admin REST -------------------------------------------------------------------

    def _admin_headers(self) -> dict[str, str]:
        response = self.session.post(
            self.token_url("master"),
            data={"grant_type": "password", "client_id": "admin-cli", "username": ADMIN_USER,
                  "password": self._admin_password},
            timeout=60,
        )
        if response.status_code != 200:
            raise ToolchainError(f"Keycloak refused the bootstrap admin (HTTP {response.status_code})")
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def import_realm(self, realm: Mapping[str, Any]) -> None:
        """Create ``realm`` (a RealmRepresentation); an existing realm of that name is replaced."""
        headers = self._admin_headers()
        name = realm["realm"]
        self.session.delete(f"{self.base_url}/admin/realms/{name}", headers=headers, timeout=60)
        response = self.session.post(f"{self.base_url}/admin/realms", json=dict(realm), headers=headers, timeout=180)
        if response.status_code != 201:
            raise ToolchainError(
                f"Keycloak did not import realm {name}: HTTP {response.status_code} {response.text[:300]}")

    def update_client(self, realm: str, client_id: str, changes: Mapping[str, Any]) -> None:
        """Change fields of a client (e.g. ``{"enabled": False}`` revokes it)."""
        headers = self._admin_headers()
        url = f"{self.base_url}/admin/realms/{realm}/clients"
        found = self.session.get(url, params={"clientId": client_id}, headers=headers, timeout=60).json()
        if not found:
            raise ToolchainError(f"Keycloak realm {realm} has no client {client_id}")
        client = found[0] | dict(changes)
        response = self.session.put(f"{url}/{client['id']}", json=client, headers=headers, timeout=60)
        if response.status_code != 204:
            raise ToolchainError(f"Keycloak did not update client {client_id}: HTTP {response.status_code}")

    # -- life cycle -------------------------------------------------------------------

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        self.session.close()
        return stop_process(self.process, grace)

    def __enter__(self) -> KeycloakServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start(
    port: int | None = None, *, log_path: Path, home: Path | None = None, startup_timeout: float = 400.0,
    heap: str = DEFAULT_HEAP,
) -> KeycloakServer:
    """Start Keycloak in dev mode on ``127.0.0.1:port`` and wait until it answers."""
    home = home or install()
    java = find_java()
    port = port or free_port()
    admin_password = secrets.token_urlsafe(18)
    env = dict(os.environ)
    env.update({
        "JAVA_HOME": str(Path(java).parent.parent),
        "JAVA_OPTS_KC_HEAP": heap,
        # Quarkus resets thread locals through java.lang internals; Java 24+ must open them.
        "JAVA_OPTS_APPEND": "--add-opens=java.base/java.lang=ALL-UNNAMED",
        "KC_BOOTSTRAP_ADMIN_USERNAME": ADMIN_USER,
        "KC_BOOTSTRAP_ADMIN_PASSWORD": admin_password,
    })
    command = [str(home / "bin" / "kc.sh"), "start-dev", f"--http-port={port}", f"--http-host={HOST}",
               "--db=dev-mem", "--hostname-strict=false", f"--http-management-port={free_port()}"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The first start of a distribution rewrites its lib/ (Quarkus augmentation): one at a time.
    with _exclusive_lock(home.parent / "start.lock"), open(log_path, "ab") as log:
        log.write(("$ " + " ".join(command) + "\n").encode())
        log.flush()
        try:
            process = subprocess.Popen(command, stdout=log,  # noqa: S603 - kc.sh of the cached distribution stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, start_new_session=True)
        except OSError as exc:
            raise ToolchainError(f"cannot start Keycloak: {exc}") from exc
        server = KeycloakServer(process, port=port, log_path=log_path, admin_password=admin_password)
        try:
            _wait_until_ready(server, startup_timeout)
        except BaseException:
            server.stop(grace=5)
            raise
    return server


def _wait_until_ready(server: KeycloakServer, timeout: float) -> None:
    url = f"{server.base_url}/realms/master"
    wait_until_ready(server.process, lambda: server.session.get(url, timeout=5).status_code == 200, what="Keycloak",
                     log_path=server.log_path, timeout=timeout, interval=1.0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ims_fhir.dev.keycloak install|serve``."""
    import json

    parser = argparse.ArgumentParser(prog="python -m ims_fhir.dev.keycloak",
                                     description="Install or run a local Keycloak (dev mode) for SMART tests.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="fetch and unpack Keycloak; print its path")
    serve_cmd = commands.add_parser("serve", help="run Keycloak until Ctrl-C")
    serve_cmd.add_argument("--port", type=int, default=8180)
    serve_cmd.add_argument("--realm", type=Path, help="a realm JSON file to import once started")
    serve_cmd.add_argument("--jwks", type=Path, help="a JWKS file to register on every client of --realm")
    args = parser.parse_args(argv)
    try:
        home = install()
        if args.command == "install":
            print(home)
            return 0
        log = default_cache_root() / f"keycloak-{args.port}.log"
        print(f"Starting Keycloak on {HOST}:{args.port} (log: {log})...", file=sys.stderr, flush=True)
        server = start(args.port, log_path=log, home=home)
    except ImsFhirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        if args.realm is not None:
            realm = json.loads(args.realm.read_text(encoding="utf-8"))
            if args.jwks is not None:
                jwks = args.jwks.read_text(encoding="utf-8")
                for client in realm.get("clients", []):
                    client.setdefault("attributes", {})["jwks.string"] = jwks
            server.import_realm(realm)
            print(f"realm {realm['realm']}: issuer {server.issuer(realm['realm'])}", flush=True)
        print(server.base_url, flush=True)
        print("Ready. Press Ctrl-C to stop.", file=sys.stderr, flush=True)
        server.process.wait()
    except KeyboardInterrupt:
        pass
    except ImsFhirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
