"""Build and run a local HAPI FHIR JPA server (FHIR R4, in-memory H2).

The integration tests and ``ims-fhir dev-server`` use it as the "real FHIR server": it
validates every write against base R4, so whatever ims-fhir sends is proven valid.

Terms used here:

module source
    The Maven module that defines the server: ``<repo>/hapi-server`` of the checkout this
    module runs from (the development tools are not in the wheel; see
    :func:`locate_module_source`).
source hash
    A SHA-256 over the module's ``pom.xml`` and ``src/`` (paths and bytes), shortened to 16
    hex digits. A change to any of them gives a new hash and so a new build.
cache root
    ``$IMS_FHIR_CACHE/hapi-server`` if ``IMS_FHIR_CACHE`` is set, else
    ``~/.cache/ims-fhir/hapi-server``. One build lives in ``<cache root>/<source hash>/``;
    the three newest builds are kept.
artifact
    The runnable jar of a build, ``<cache root>/<source hash>/ims-fhir-hapi-server.jar``;
    ``java -jar`` starts it, no Maven needed.
Maven repository
    Where Maven keeps downloaded artifacts: ``~/.m2/repository`` unless ``maven_repo`` is
    given. A cold build downloads about 250 MB into it.

Needs Java 17+ (``$JAVA_HOME/bin/java``, else ``java`` on PATH) and Maven (``mvn`` on
PATH) to build, and only Java to run a built artifact. No module-level state: every
function takes its settings as arguments.

Command line: ``python -m ims_fhir.dev.hapi build`` builds (or finds) the artifact and
prints its path; ``python -m ims_fhir.dev.hapi serve [--port N]`` runs the server in the
foreground (as ``ims-fhir dev-server``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import requests

from ims_fhir.dev.process import HOST, free_port, wait_until_ready
from ims_fhir.dev.process import LOG_TAIL_LINES as _LOG_TAIL_LINES
from ims_fhir.dev.process import log_tail as _log_tail
from ims_fhir.dev.process import stop as stop_process
from ims_fhir.errors import ImsFhirError, ToolchainError, UsageError

JAR_NAME = "ims-fhir-hapi-server.jar"
MIN_JAVA = 17
#: Heap for the server JVM: HAPI with validation peaks well under this for test workloads.
DEFAULT_JAVA_OPTS: tuple[str, ...] = ("-Xmx1280m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
DEFAULT_BUILD_TIMEOUT = 1800.0
#: How many builds (source hashes) the cache keeps; older ones are deleted after a build.
KEEP_BUILDS = 3
STOP_GRACE_SECONDS = 20.0


# --------------------------------------------------------------------------- toolchain


@dataclass(frozen=True, slots=True)
class Toolchain:
    """The Java and Maven executables found by :func:`check_toolchain`."""

    java: str
    java_major: int
    mvn: str | None


def _find_java() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / ("java.exe" if os.name == "nt" else "java")
        if candidate.is_file():
            return str(candidate)
    return shutil.which("java")


def _java_major(java: str) -> int:
    """The major version of a ``java`` executable (8 for "1.8.0_x", 17 for "17.0.15")."""
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"cannot run {java} -version: {exc}") from exc
    text = proc.stderr + proc.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        first_line = text.strip().splitlines()[0] if text.strip() else "no output"
        raise ToolchainError(f"cannot tell the Java version of {java} ({first_line})")
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    return major


def check_toolchain(*, need_maven: bool = True) -> Toolchain:
    """Check that Java 17+ (and, when building, Maven) are installed.

    Raises :class:`ToolchainError` with a one-line message saying what is missing.
    """
    java = _find_java()
    if java is None:
        raise ToolchainError(
            f"Java {MIN_JAVA}+ is needed for the HAPI FHIR dev server but `java` was not found "
            "(install a JDK 17, e.g. openjdk-17-jdk, or set JAVA_HOME)"
        )
    major = _java_major(java)
    if major < MIN_JAVA:
        raise ToolchainError(f"Java {MIN_JAVA}+ is needed for the HAPI FHIR dev server but {java} is Java {major}")
    mvn = shutil.which("mvn")
    if need_maven and mvn is None:
        raise ToolchainError(
            "Maven is needed to build the HAPI FHIR dev server but `mvn` was not found on PATH (install maven 3.8+)"
        )
    return Toolchain(java=java, java_major=major, mvn=mvn)


# --------------------------------------------------------------------------- build


def locate_module_source() -> Path:
    """Find the Maven module: ``<repo>/hapi-server`` of the checkout (``ims_fhir/dev/`` is two levels below)."""
    repo = Path(__file__).resolve().parent.parent.parent
    candidate = repo / "hapi-server"
    if (candidate / "pom.xml").is_file():
        return candidate
    raise ToolchainError(
        f"the hapi-server Maven module was not found in {repo}: the HAPI FHIR dev server runs from a checkout "
        'of ims-fhir (pip install -e ".[dev]")'
    )


def _module_files(source: Path) -> list[Path]:
    files = [source / "pom.xml"]
    src = source / "src"
    if src.is_dir():
        files.extend(sorted(p for p in src.rglob("*") if p.is_file()))
    return files


def source_hash(source: Path) -> str:
    """Hash of the module's pom.xml and src/ tree: names and bytes, in a stable order."""
    digest = hashlib.sha256()
    for path in _module_files(source):
        digest.update(path.relative_to(source).as_posix().encode("utf-8"))
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def default_cache_root() -> Path:
    """``$IMS_FHIR_CACHE/hapi-server``, else ``~/.cache/ims-fhir/hapi-server``."""
    base = os.environ.get("IMS_FHIR_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "ims-fhir"
    return root / "hapi-server"


def artifact_path(*, source: Path | None = None, cache_root: Path | None = None) -> Path:
    """Where the artifact of the current module source is (or would be) built."""
    source = source or locate_module_source()
    cache_root = cache_root or default_cache_root()
    return cache_root / source_hash(source) / JAR_NAME


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` so that two processes never build at once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; concurrent first builds just both build.
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def build(
    *,
    source: Path | None = None,
    cache_root: Path | None = None,
    maven_repo: Path | None = None,
    log_path: Path | None = None,
    timeout: float = DEFAULT_BUILD_TIMEOUT,
    force: bool = False,
) -> Path:
    """Build the server once per source hash and return the artifact (a runnable jar).

    An artifact already in the cache is reused without running Maven. Otherwise the module
    is copied to a scratch directory in the cache root and built there with
    ``mvn -B -ntp -q -DskipTests package`` (so a read-only install location works too);
    Maven's output goes to ``log_path`` (default ``<cache root>/<hash>.build.log``).
    A failed build raises :class:`ToolchainError` naming the log.
    """
    source = source or locate_module_source()
    cache_root = cache_root or default_cache_root()
    digest = source_hash(source)
    target_dir = cache_root / digest
    artifact = target_dir / JAR_NAME
    if artifact.is_file() and not force:
        return artifact

    toolchain = check_toolchain(need_maven=True)
    if toolchain.mvn is None:  # check_toolchain(need_maven=True) raises first; this narrows the type
        raise ToolchainError("Maven (mvn) is needed to build the HAPI FHIR dev server")
    log_path = log_path or cache_root / f"{digest}.build.log"
    with _exclusive_lock(cache_root / f"{digest}.lock"):
        if artifact.is_file() and not force:  # another process built it while we waited
            return artifact
        cache_root.mkdir(parents=True, exist_ok=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"{digest}.build-", dir=cache_root))
        try:
            shutil.copy2(source / "pom.xml", scratch / "pom.xml")
            shutil.copytree(source / "src", scratch / "src")
            command = [toolchain.mvn, "-B", "-ntp", "-q", "-DskipTests"]
            if maven_repo is not None:
                command.append(f"-Dmaven.repo.local={Path(maven_repo).expanduser().resolve()}")
            command.append("package")
            env = dict(os.environ)
            if os.environ.get("JAVA_HOME") is None:
                # Let Maven use the same JDK we checked.
                env["JAVA_HOME"] = str(Path(toolchain.java).resolve().parent.parent)
            with open(log_path, "wb") as log:
                log.write(("$ " + " ".join(command) + "\n").encode())
                log.flush()
                try:
                    proc = subprocess.run(
                        command,
                        cwd=scratch,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=env,
                        timeout=timeout,
                        check=False,
                    )
                except subprocess.TimeoutExpired as exc:
                    raise ToolchainError(
                        f"building the HAPI FHIR server took over {timeout:.0f} s; see {log_path}"
                    ) from exc
                except OSError as exc:
                    raise ToolchainError(f"cannot run Maven ({exc}); see {log_path}") from exc
            built = scratch / "target" / JAR_NAME
            if proc.returncode != 0 or not built.is_file():
                raise ToolchainError(
                    f"building the HAPI FHIR server failed (mvn exit {proc.returncode}); see {log_path}"
                )
            target_dir.mkdir(parents=True, exist_ok=True)
            # Same filesystem, so the finished jar appears atomically.
            os.replace(built, artifact)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    _prune_old_builds(cache_root, keep=digest)
    return artifact


def _prune_old_builds(cache_root: Path, *, keep: str, max_builds: int = KEEP_BUILDS) -> None:
    """Delete all but the ``max_builds`` newest builds (about 250 MB each); never ``keep``.

    A JVM still running an old jar is not disturbed: on POSIX it keeps the deleted file open.
    """
    builds = sorted(
        (d for d in cache_root.iterdir() if d.is_dir() and re.fullmatch(r"[0-9a-f]{16}", d.name)),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    for old in builds[max_builds:]:
        if old.name == keep:
            continue
        shutil.rmtree(old, ignore_errors=True)
        for leftover in (cache_root / f"{old.name}.lock", cache_root / f"{old.name}.build.log"):
            leftover.unlink(missing_ok=True)


# --------------------------------------------------------------------------- run


def _port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like Tomcat: a port whose old connections linger in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class DevServer:
    """A running server JVM. Use as a context manager, or call :meth:`stop`."""

    def __init__(self, process: subprocess.Popen[bytes], *, port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path

    @property
    def base_url(self) -> str:
        """The FHIR base, e.g. ``http://127.0.0.1:8080/fhir``."""
        return f"http://{HOST}:{self.port}/fhir"

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return _log_tail(self.log_path, lines)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        """Ask the JVM to shut down (SIGTERM), kill it after ``grace`` seconds; return its exit code."""
        return stop_process(self.process, grace)

    def __enter__(self) -> DevServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited {self.process.returncode}"
        return f"<DevServer {self.base_url} pid={self.pid} {state}>"


def _ig_package() -> Path | None:
    """The IMS IG package shipped with ims-fhir, for the dev server's validator."""
    from ims_fhir.ig import BUILT_PACKAGE

    return BUILT_PACKAGE if BUILT_PACKAGE.is_file() else None


def start(
    port: int | None = None,
    *,
    log_path: Path,
    startup_timeout: float = 300.0,
    artifact: Path | None = None,
    java_opts: Sequence[str] = DEFAULT_JAVA_OPTS,
    cache_root: Path | None = None,
    maven_repo: Path | None = None,
    server_args: Sequence[str] = (),
    ig_package: Path | None | bool = True,
    niceness: int = 0,
    cpus: str | None = None,
) -> DevServer:
    """Start the server on ``127.0.0.1:port`` (a free port when None) and wait until ready.

    ``ig_package`` (a FHIR NPM package .tgz; by default, ``True``, the IMS IG shipped with
    ims-fhir, :data:`ims_fhir.ig.BUILT_PACKAGE`; ``False``/None: none) is loaded into the
    server's validator: writes are then validated against the IMS IG's profiles, CodeSystems
    and ValueSets. The server's validation is strict (an unknown code system is an error), so
    every server that takes ims-fhir's output needs the IG, whatever mode it runs in.
    ``server_args`` are passed to the server: its optional modes, e.g.
    ``--ims.auth.issuer=URL --ims.auth.audience=AUD`` (SMART-protected:
    every request but ``/metadata`` needs a token of that issuer) or
    ``--ims.disable=transaction`` (see ``hapi-server/src/main/java/org/imsfhir/hapi/modes``).

    ``niceness`` > 0 runs the JVM at that lower CPU priority (``nice``) and ``cpus`` (a
    ``taskset`` list, e.g. ``"1"``) on those CPUs only: a benchmark that shares the machine
    with the server keeps CPU for what it measures, as if the server were another machine.
    The JVM runs in a session of its own, which Linux's autogroup scheduling gives a CPU
    share equal to any other session's whatever its processes' nice values: the niceness is
    therefore set on its autogroup too (``/proc/PID/autogroup``), else it would change nothing.

    Builds the artifact first if needed (see :func:`build`). Ready means
    ``GET /fhir/metadata`` answered 200. The JVM's output goes to ``log_path``. If the JVM
    exits early or is not ready within ``startup_timeout`` seconds, it is stopped and
    :class:`ToolchainError` is raised with the tail of the log.
    """
    toolchain = check_toolchain(need_maven=artifact is None)
    if artifact is None:
        artifact = build(cache_root=cache_root, maven_repo=maven_repo)
    if port is None:
        port = free_port()
    elif not _port_is_free(port):
        raise UsageError(f"port {port} on {HOST} is already in use; choose another with --port")

    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [toolchain.java, *java_opts, "-jar", str(artifact), f"--server.port={port}", *server_args]
    package = _ig_package() if ig_package is True else (ig_package or None)
    if package is not None:
        command.append(f"--ims-fhir.ig-package={Path(package).resolve()}")
    if niceness > 0:
        command = ["nice", "-n", str(niceness), *command]
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    with open(log_path, "ab") as log:
        log.write(("$ " + " ".join(command) + "\n").encode())
        log.flush()
        try:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own process group: a Ctrl-C in the terminal reaches us, and we stop the JVM.
                start_new_session=True,
            )
        except OSError as exc:
            raise ToolchainError(f"cannot start {toolchain.java}: {exc}") from exc
    if niceness > 0:
        _nice_autogroup(process.pid, niceness)

    server = DevServer(process, port=port, log_path=log_path)
    try:
        _wait_until_ready(server, startup_timeout)
    except BaseException:
        server.stop(grace=5)
        raise
    return server


def _nice_autogroup(pid: int, niceness: int) -> None:
    """Lower the CPU share of ``pid``'s autogroup (its session) to ``niceness``, where the
    kernel schedules by autogroup; elsewhere the process's own nice value does the work."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(niceness))
    except OSError:
        pass  # no autogroup scheduling here (or not Linux): plain nice applies


def _wait_until_ready(server: DevServer, timeout: float) -> None:
    with requests.Session() as session:
        session.trust_env = False  # a loopback server: never through an HTTP(S)_PROXY

        def up() -> bool:
            reply = session.get(server.base_url + "/metadata", timeout=5, headers={"Accept": "application/fhir+json"})
            return reply.status_code == 200

        wait_until_ready(server.process, up, what="the HAPI FHIR server", log_path=server.log_path, timeout=timeout,
                         interval=0.5)


# --------------------------------------------------------------------------- foreground


def serve_foreground(
    port: int = 8080,
    *,
    log_path: Path | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """Run the server until Ctrl-C; print the base URL once ready. Returns an exit code.

    For ``ims-fhir dev-server [--port N]``. Exit codes: 0 stopped by Ctrl-C (or SIGTERM),
    1 the server died on its own, 2 toolchain/build/port problem (message on stderr).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    cache_root = default_cache_root()
    log_path = Path(log_path) if log_path else cache_root / f"dev-server-{port}.log"
    try:
        check_toolchain(need_maven=False)
        if not artifact_path(cache_root=cache_root).is_file():
            print(
                "Building the HAPI FHIR server (first run only; downloads ~250 MB with Maven)...", file=err, flush=True
            )
        artifact = build(cache_root=cache_root)
        print(f"Starting HAPI FHIR R4 on {HOST}:{port} (log: {log_path})...", file=err, flush=True)
        log_path.unlink(missing_ok=True)  # one run per log file, not an ever-growing one
        server = start(port, log_path=log_path, artifact=artifact, ig_package=_ig_package())
    except ImsFhirError as exc:
        print(f"error: {exc}", file=err, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130

    print(server.base_url, file=out, flush=True)
    print("Ready. Press Ctrl-C to stop.", file=err, flush=True)
    with _sigterm_as_keyboard_interrupt():
        try:
            code = server.process.wait()
        except KeyboardInterrupt:
            print("Stopping...", file=err, flush=True)
            server.stop()
            return 0
    print(
        f"error: the HAPI FHIR server exited with code {code}; log {log_path} ends with:\n{server.log_tail()}",
        file=err,
        flush=True,
    )
    return 1


@contextlib.contextmanager
def _sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so that the JVM is stopped too (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- __main__


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ims_fhir.dev.hapi build|serve``."""
    parser = argparse.ArgumentParser(
        prog="python -m ims_fhir.dev.hapi",
        description="Build or run the local HAPI FHIR JPA server (FHIR R4, in-memory H2).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build (or find) the server jar; print its path")
    build_cmd.add_argument(
        "--cache-root", type=Path, help="default: $IMS_FHIR_CACHE/hapi-server or ~/.cache/ims-fhir/hapi-server"
    )
    build_cmd.add_argument("--maven-repo", type=Path, help="Maven local repository (default ~/.m2/repository)")
    build_cmd.add_argument("--force", action="store_true", help="rebuild even if cached")
    serve_cmd = commands.add_parser("serve", help="run the server until Ctrl-C")
    serve_cmd.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)

    if args.command == "serve":
        return serve_foreground(args.port)
    try:
        artifact = build(cache_root=args.cache_root, maven_repo=args.maven_repo, force=args.force)
    except ImsFhirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(artifact)
    return 0


if __name__ == "__main__":
    sys.exit(main())
