"""A real PostgreSQL server for the tests (Debian's ``postgresql`` package), and the storage fixtures.

``postgres_server`` starts one server per test session (per xdist worker): ``initdb`` in a
temporary directory, ``pg_ctl start`` on a free port of 127.0.0.1 with its socket in that
directory, trust authentication for the one user ``imsfhir``. Run as root, the server runs
as ``nobody`` (PostgreSQL refuses to run as root), through ``runuser``. It is stopped and
its directory removed at the end of the session. Missing binaries fail the tests with the
command that installs them; nothing is skipped.

``postgres_url`` gives a test a fresh database of its own; ``storage_url`` is parametrised
over both storages (``sqlite`` and ``postgresql``): a test or fixture that takes it runs
against each.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL = "apt-get install -y postgresql"
USER = "imsfhir"
RUN_AS = "nobody"


def find_bindir() -> Path | None:
    """The directory of ``initdb``/``pg_ctl``: ``pg_config --bindir``, else the newest /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=False)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0, reverse=True)
    candidates += [Path(p) for p in versions]
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int
    run_as: list[str]

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pg_ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "fast", "-w", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Start a throw-away server (see the module docstring); raises RuntimeError with the reason."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(f"PostgreSQL's server binaries (initdb, pg_ctl) were not found by `pg_config --bindir` "
                           f"or in /usr/lib/postgresql/*/bin: install them with `{INSTALL}`")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise RuntimeError("psycopg 3 is missing: pip install -e '.[test]'") from None
    root = Path(tempfile.mkdtemp(prefix="ims-fhir-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            raise RuntimeError("running as root, and runuser (util-linux) is missing to start PostgreSQL as nobody")
        entry = pwd.getpwnam(RUN_AS)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        run_as = [runuser, "-u", RUN_AS, "--"]
    root.chmod(0o700)
    server = PostgresServer(bindir, root, _free_port(), run_as)
    init = subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(server.data), "-U", USER, "--auth=trust",
                           "-E", "UTF8", "--no-sync", "--no-instructions"],
                          capture_output=True, text=True, timeout=300, check=False)
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout[-2000:]}\n{init.stderr[-2000:]}")
    options = (f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off "
               "-c max_connections=200 -c shared_buffers=64MB")
    started = server.pg_ctl("start", "-w", "-t", "120", "-l", str(root / "server.log"), "-o", options)
    if started.returncode != 0:
        log = (root / "server.log").read_text(errors="replace")[-3000:] if (root / "server.log").exists() else ""
        server.stop()
        raise RuntimeError(f"pg_ctl start failed ({started.returncode}): {started.stderr[-1000:]}\n{log}")
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (see the module docstring); fails, never skips."""
    try:
        server = start_postgres()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A new, empty database of the session's server."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The outbox URL of each storage in turn: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'outbox.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))
