"""The ``ims-fhir`` command line.

``main(argv) -> exit code``: 0 everything converted/accepted, 1 some records rejected
or failed, 2 usage, configuration, unreadable input or connection errors. Errors are
reported once, here, as one line on stderr; never a traceback for a known failure.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import click
import orjson

from . import __version__
from .errors import ImsFhirError

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
#: Commands that optional parts of the distribution plug in (``[project.entry-points."ims_fhir.commands"]``
#: in pyproject.toml, e.g. ``serve`` from the service). They are loaded by name, only when asked for.
PLUGIN_GROUP = "ims_fhir.commands"


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 resource``, ``2 resources``, ``1,000 entries``: the number with its noun agreeing."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


class _Progress:
    """A one-line progress display with rate, only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.monotonic()
        self._last = 0.0

    def __call__(self, read: int, rejected: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.25:
            return
        self._last = now
        rate = read / max(now - self.start, 1e-9)
        sys.stderr.write(f"\r  {read:,} records read, {rejected:,} rejected  ({rate:,.0f} records/s)   ")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 72 + "\r")
            sys.stderr.flush()


_AUTH_HELP = ("none | bearer:env:VAR | basic:USER:env:VAR | oauth2:TOKEN_URL:CLIENT_ID:env:VAR[:SCOPE] | "
              "smart:CLIENT_ID:PRIVATE_KEY_FILE[:SCOPES] (SMART Backend Services; secrets from environment "
              "variables; also read from IMS_FHIR_AUTH).")


def _tls_options(command: Any) -> Any:
    """--token-url, --ca-bundle, --client-cert, --client-key: how push and pull reach a hospital server."""
    for option in reversed([
        click.option("--token-url", envvar="IMS_FHIR_TOKEN_URL",
                     help="SMART token endpoint; default: discovered from [server]/.well-known/smart-configuration."),
        click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), envvar="IMS_FHIR_CA_BUNDLE",
                     help="CA certificates to trust instead of the system's (PEM), e.g. the hospital's private CA."),
        click.option("--client-cert", type=click.Path(exists=True, dir_okay=False), envvar="IMS_FHIR_CLIENT_CERT",
                     help="Client certificate for mutual TLS (PEM; may hold the key too)."),
        click.option("--client-key", type=click.Path(exists=True, dir_okay=False), envvar="IMS_FHIR_CLIENT_KEY",
                     help="Private key of --client-cert (PEM, unencrypted), when not in the same file."),
    ]):
        command = option(command)
    return command


def _check_csv_folders(inputs: Sequence[Path]) -> None:
    """A folder given as input is a CSV folder: it must hold at least one table of the format."""
    from .errors import UsageError
    from .records.vocabulary import CSV_TABLES, FORMAT

    for path in inputs:
        if path.is_dir() and not any((path / name).is_file() for name in CSV_TABLES):
            raise UsageError(f"{path}: no CSV table of {FORMAT} was found in this folder "
                             f"(expected one or more of {', '.join(CSV_TABLES)})")


class _PluggableGroup(click.Group):
    """A click group that also offers the commands registered under :data:`PLUGIN_GROUP`.

    A plugin whose extra is not installed (its import fails) still shows up: asked for, it
    says which ``pip install`` brings it, and exits 2."""

    def _plugins(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP) if ep.name not in self.commands}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self._plugins()])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None:
            return found
        ep = self._plugins().get(cmd_name)
        if ep is None:
            return None
        try:
            loaded = ep.load()
        except ImportError:
            return _missing_extra(cmd_name, ep)
        return loaded if isinstance(loaded, click.Command) else None


def _missing_extra(name: str, ep: EntryPoint) -> click.Command:
    extra = ",".join(ep.extras) or name
    install = f'pip install "ims-fhir[{extra}]"'

    @click.command(name=name, context_settings={"ignore_unknown_options": True, "help_option_names": []},
                   help=f"Not installed here: {install}", add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def missing(args: tuple[str, ...]) -> int:
        click.echo(f"ims-fhir {name} needs the {extra} extra: {install}", err=True)
        return EXIT_USAGE

    return missing


@click.group(cls=_PluggableGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ims-fhir")
def cli() -> None:
    """Convert Gunn IMS physiotherapy records (ims-record/1) to and from HL7 FHIR R4."""


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created if missing).")
@click.option("--format", "output_format", type=click.Choice(["ndjson", "bundle"]), default="ndjson", show_default=True,
              help="ndjson: one file per resource type (Bulk Data layout); bundle: transaction Bundles.")
@click.option("--clinic-id", help="Source clinic id, for inputs that do not carry a source (NDJSON, CSV without source.json).")
@click.option("--clinic-name", help="Source clinic display name (becomes the Organization name).")
@click.option("--system-base", help="Absolute URI, base of the clinic's identifier systems.")
@click.option("--bundle-size", type=click.IntRange(min=2), default=200, show_default=True,
              help="Most entries per Bundle (with --format bundle).")
@click.option("--validate", is_flag=True, help="Validate every resource with the fhir.resources R4 models (slower).")
@click.option("--lenient", is_flag=True, help="Ignore unknown fields instead of rejecting the record.")
@click.option("--strict-refs", is_flag=True, help="Reject records whose patient, practitioner or assessment is not in the input.")
@click.option("--default-tz", metavar="ZONE", help="IANA time zone for date-times written without an offset.")
@click.option("--country", metavar="CC", help="ISO 3166-1 alpha-2 country of the clinic (with --clinic-id), e.g. CA.")
@click.option("--jurisdiction", metavar="CC-XX",
              help="ISO 3166-2 subdivision (with --clinic-id): assigner of health numbers, e.g. CA-BC.")
@click.option("--cpt/--no-cpt", default=None,
              help="Add (or leave out) CPT 20560/20561 on treatments. Default: only for a source with country US.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes; the output is byte-identical whatever the number.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's summary as JSON on stdout.")
def convert(inputs: tuple[Path, ...], out_dir: Path, output_format: str, clinic_id: str | None, clinic_name: str | None,
            system_base: str | None, bundle_size: int, validate: bool, lenient: bool, strict_refs: bool,
            default_tz: str | None, country: str | None, jurisdiction: str | None, cpt: bool | None, jobs: int,
            quiet: bool, as_json: bool) -> int:
    """Convert IMS records (JSON document, NDJSON[.gz] or CSV folder) to FHIR R4.

    Writes OUT/<ResourceType>.ndjson (or OUT/bundle-0001.json ...), OUT/rejects.ndjson
    (one line per rejected record, with every reason) and OUT/summary.json.
    """
    from .convert import ConvertOptions
    from .convert import convert as run_convert
    from .errors import UsageError
    from .records.models import check_time_zone

    if default_tz:
        try:
            check_time_zone(default_tz)
        except ValueError as exc:
            raise UsageError(f"--default-tz: {exc}") from exc
    _check_csv_folders(inputs)
    source = {k: v for k, v in (("clinic_id", clinic_id), ("clinic_name", clinic_name), ("system_base", system_base),
                                ("country", country), ("jurisdiction", jurisdiction)) if v}
    options = ConvertOptions(
        out_dir=out_dir, output_format=output_format, bundle_size=bundle_size, source=source or None, lenient=lenient,
        strict_refs=strict_refs, validate=validate, default_tz=default_tz, cpt=cpt,
    )
    progress = _Progress(enabled=not quiet and not as_json and sys.stderr.isatty())
    started = time.monotonic()
    try:
        summary = run_convert(list(inputs), options, progress=progress, jobs=jobs)
    finally:
        progress.done()
    elapsed = time.monotonic() - started
    if as_json:
        click.echo(orjson.dumps(summary.as_dict() | {"elapsed_seconds": round(elapsed, 3)}, option=orjson.OPT_INDENT_2))
    elif not quiet:
        total = sum(summary.resources.values())
        rate = summary.read / elapsed if elapsed > 0 else 0.0
        click.echo(f"converted {summary.converted:,} of {_count(summary.read, 'record')} into {_count(total, 'resource')} "
                   f"in {out_dir} "
                   f"({elapsed:.2f} s, {rate:,.0f} records/s)", err=True)
        if summary.rejected:
            rules = ", ".join(f"{rule} {n}" for rule, n in sorted(summary.rejected_by_rule.items()))
            click.echo(f"rejected {_count(summary.rejected, 'record')} ({rules}): see {out_dir / 'rejects.ndjson'}", err=True)
    return summary.exit_code


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--server", metavar="URL",
              help="FHIR R4 base URL, e.g. https://fhir.hospital.example.org/r4.  [required unless --dry-run]")
@click.option("--auth", "auth_spec", default="none", show_default=True, envvar="IMS_FHIR_AUTH", help=_AUTH_HELP)
@_tls_options
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Read timeout per request, seconds.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=5, show_default=True,
              help="Attempts per request on connection errors, timeouts, 429 and 5xx (with backoff, Retry-After honoured).")
@click.option("--bundle-size", type=click.IntRange(min=2), default=200, show_default=True,
              help="Most entries per transaction Bundle (IMS record inputs; a record's resources stay together).")
@click.option("--concurrency", type=click.IntRange(min=1, max=64), default=1, show_default=True,
              help="Bundles in flight at once (a patient's Bundles still go in order); helps over slow links.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write one JSON line per rejected or failed record, with the server's OperationOutcome.")
@click.option("--dry-run", is_flag=True, help="Build the Bundles and count them; send nothing.")
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The local state file: identity map, ownership, conflicts, audit trail per server "
                   "[default: $XDG_STATE_HOME/ims-fhir/push-state.sqlite or ~/.local/state/ims-fhir/push-state.sqlite]. "
                   "Safe to delete: rebuilt by searching the server.")
@click.option("--clinic-id", help="Source clinic id, for IMS record inputs that do not carry a source (NDJSON, CSV).")
@click.option("--clinic-name", help="Source clinic display name (becomes the Organization name).")
@click.option("--system-base", help="Absolute URI, base of the clinic's identifier systems.")
@click.option("--lenient", is_flag=True, help="Ignore unknown fields of IMS records instead of rejecting the record.")
@click.option("--default-tz", metavar="ZONE", help="IANA time zone for date-times written without an offset.")
@click.option("--country", metavar="CC", help="ISO 3166-1 alpha-2 country of the clinic (with --clinic-id).")
@click.option("--jurisdiction", metavar="CC-XX", help="ISO 3166-2 subdivision (with --clinic-id), e.g. CA-BC.")
@click.option("--cpt/--no-cpt", default=None,
              help="Add (or leave out) CPT 20560/20561 on treatments. Default: only for a source with country US.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def push(inputs: tuple[Path, ...], server: str | None, auth_spec: str, token_url: str | None, ca_bundle: str | None,
         client_cert: str | None, client_key: str | None, timeout: float, max_attempts: int, bundle_size: int,
         concurrency: int, report_file: Path | None, dry_run: bool, state_path: Path | None, clinic_id: str | None,
         clinic_name: str | None,
         system_base: str | None, lenient: bool, default_tz: str | None, country: str | None, jurisdiction: str | None,
         cpt: bool | None, quiet: bool, as_json: bool) -> int:
    """Send IMS records, or the output of convert, to a FHIR server as transaction Bundles.

    Pushing the same records twice changes nothing; an edited record is updated in place
    (with If-Match on the version last written); Patients and Practitioners already on the
    server (same identifier) are referenced, never overwritten ("kept (server-owned)"); a
    resource edited on the server since is not overwritten but recorded as a conflict (see
    `ims-fhir conflicts`). Exit 0 all accepted, 1 some rejected, failed or in conflict
    (see --report), 2 usage, configuration or connection errors.
    """
    from .client import ClientConfig
    from .convert import ConvertOptions
    from .push import PushOptions
    from .push import push as run_push

    source = {k: v for k, v in (("clinic_id", clinic_id), ("clinic_name", clinic_name), ("system_base", system_base),
                                ("country", country), ("jurisdiction", jurisdiction)) if v}
    convert_options = ConvertOptions(out_dir=Path("."), source=source or None, lenient=lenient,
                                     default_tz=default_tz, cpt=cpt)
    config = None
    if server:
        config = ClientConfig.from_values(server, auth=auth_spec, read_timeout=timeout, ca_bundle=ca_bundle,
                                          max_attempts=max_attempts, token_url=token_url, client_cert=client_cert,
                                          client_key=client_key)
    elif not dry_run:
        raise click.UsageError("--server is required (or use --dry-run)")
    lines: list[bytes] = []
    report_fh = report_file.open("wb") if report_file else None

    def report(item: dict[str, Any]) -> None:
        data = orjson.dumps(item) + b"\n"
        if report_fh:
            report_fh.write(data)
        lines.append(data)

    show = not quiet and not as_json and sys.stderr.isatty()
    started = time.monotonic()

    def progress(s: Any) -> None:
        if show:
            sys.stderr.write(f"\r  {s.bundles:,} bundles, {s.entries:,} entries sent, {s.failed_records:,} failed   ")
            sys.stderr.flush()

    try:
        summary = run_push(list(inputs), config, PushOptions(bundle_size=bundle_size, dry_run=dry_run,
                                                              convert=convert_options, concurrency=concurrency,
                                                              state_path=state_path),
                           report=report, progress=progress)
    finally:
        if report_fh:
            report_fh.close()
        if show:
            sys.stderr.write("\r" + " " * 72 + "\r")
    elapsed = time.monotonic() - started
    if as_json:
        click.echo(orjson.dumps(summary.as_dict() | {"dry_run": dry_run, "elapsed_seconds": round(elapsed, 3)},
                                option=orjson.OPT_INDENT_2))
    elif not quiet:
        verb = "would send" if dry_run else "sent"
        click.echo(f"{verb} {_count(summary.entries, 'entry', 'entries')} in {_count(summary.bundles, 'bundle')}: "
                   f"{summary.created:,} created, {summary.updated:,} updated, {summary.unchanged:,} unchanged, "
                   f"{summary.kept:,} kept (server-owned), {summary.conflicts:,} conflicts, "
                   f"{_count(summary.failed_records, 'record')} failed, "
                   f"{summary.rejected_records:,} rejected before sending ({elapsed:.1f} s)", err=True)
        for data in lines[:5]:
            item = orjson.loads(data)
            if "problems" in item:  # rejected by validation before sending
                who = f"{item.get('record_type') or 'record'} {item.get('id') or ''} at {item.get('origin')}"
                why = "; ".join(f"{p['path']}: {p['message']}" for p in item["problems"])
                click.echo(f"  rejected: {who}: {why}", err=True)
            else:
                who = ", ".join(f"{r['record_type']} {r['id']}" for r in item.get("records", []))
                click.echo(f"  failed: {who}: {item.get('error')}", err=True)
        if len(lines) > 5:
            where = f" (see {report_file})" if report_file else " (use --report FILE)"
            click.echo(f"  ... and {len(lines) - 5} more{where}", err=True)
    return summary.exit_code


@cli.command()
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The push state file (default as for push).")
@click.option("--all", "show_all", is_flag=True, help="Also list resolved conflicts.")
@click.option("--resolve", "conflict_id", type=int, help="The conflict to resolve (its id).")
@click.option("--as", "resolution", type=click.Choice(["resend", "accept", "dismiss"]),
              help="resend: write the clinic's version over the server's; accept: take the server's version as "
                   "the clinic's new revision (written to --out); dismiss: keep the server's version, do not send the "
                   "clinic's edit.")
@click.option("--server", help="The FHIR server of the conflict (needed with --resolve).")
@click.option("--auth", "auth_spec", default="none", show_default=True, envvar="IMS_FHIR_AUTH", help="As for push.")
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), help="CA certificates to trust (PEM).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="With --as accept: write the record as the server has it (ims-record/1 NDJSON).")
@click.option("--json", "as_json", is_flag=True, help="Print the conflicts as JSON on stdout.")
def conflicts(state_path: Path | None, show_all: bool, conflict_id: int | None, resolution: str | None,
              server: str | None, auth_spec: str, ca_bundle: str | None, out_file: Path | None, as_json: bool) -> int:
    """List the conflicts ims-fhir push recorded, or resolve one.

    A conflict is a resource of the clinic that someone edited on the server since the adapter
    wrote it: push did not overwrite it. Exit 0 on success, 1 when open conflicts remain listed,
    2 usage errors.
    """
    from .client import ClientConfig, FhirClient
    from .importing import reverse_resources
    from .records.writers import write_ndjson
    from .sync.push_state import PushState, default_state_path
    from .sync.reconcile import resolve_conflict

    with PushState(state_path or default_state_path()) as state:
        if conflict_id is None:
            found = state.conflicts(state=None if show_all else "open", limit=10000)
            if as_json:
                click.echo(orjson.dumps([c.as_dict() for c in found], option=orjson.OPT_INDENT_2))
            else:
                for c in found:
                    what = f"{c.record_type} {c.record_id}" if c.record_id else f"{c.resource_type}/{c.server_id}"
                    click.echo(f"#{c.id} {c.state}{' (' + c.resolution + ')' if c.resolution else ''}: {what} on "
                               f"{c.target}: {c.resource_type}/{c.server_id} version {c.server_version}, last written "
                               f"{c.base_version}; {len(c.diff)} fields differ: "
                               + ", ".join(d.path for d in c.diff[:6]))
            return 0
        if resolution is None or not server:
            raise click.UsageError("--resolve needs --as resend|accept|dismiss and --server URL")
        if resolution == "accept" and out_file is None:
            raise click.UsageError("--as accept needs --out FILE for the record as the server has it")
        config = ClientConfig.from_values(server, auth=auth_spec, ca_bundle=ca_bundle)
        with FhirClient(config) as client:
            conflict = state.conflict(conflict_id)
            if conflict is not None and conflict.target != client.base_url:
                raise click.UsageError(f"conflict {conflict_id} is on {conflict.target}, not {client.base_url}")
            done = resolve_conflict(client, state, conflict_id, resolution, now=time.time())
        if resolution == "accept" and out_file is not None:
            result = reverse_resources(done.resources)
            write_ndjson(out_file, [(r.record_type, r.data) for r in result.records])
            click.echo(f"conflict {conflict_id} accepted: {len(result.records)} records as the server has them in "
                       f"{out_file}; push them as the clinic's new revision", err=True)
        else:
            click.echo(f"conflict {conflict_id} resolved ({resolution}); the server is at version {done.version}",
                       err=True)
    return 0


@cli.command()
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file instead of stdout.")
def schema(out_file: Path | None) -> int:
    """Print the JSON Schema of the ims-record/1 format (generated from the models)."""
    from .errors import UsageError
    from .records.models import json_schema

    data = orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2) + b"\n"
    if out_file:
        try:
            out_file.parent.mkdir(parents=True, exist_ok=True)
            out_file.write_bytes(data)
        except OSError as exc:
            raise UsageError(f"--out {out_file}: cannot write ({exc.strerror or exc})") from exc
    else:
        sys.stdout.buffer.write(data)
    return EXIT_OK


@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write one CodeSystem-<id>.json per CodeSystem into this folder instead of an NDJSON stream on stdout.")
def codesystems(out_dir: Path | None) -> int:
    """Print the project's own FHIR CodeSystems (the codes used where no standard code is confirmed)."""
    from .terminology import code_systems, default_terminology

    resources = code_systems(default_terminology())
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        for res in resources:
            (out_dir / f"CodeSystem-{res['id']}.json").write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        for res in resources:
            sys.stdout.buffer.write(orjson.dumps(res) + b"\n")
    return EXIT_OK


@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the IG package (<name>-<version>.tgz, standard FHIR NPM layout) into.")
@click.option("--expand", is_flag=True, help="Also write each resource of the package as <Type>-<id>.json.")
def ig(out_dir: Path, expand: bool) -> int:
    """Write the IMS FHIR Implementation Guide package (profiles, extensions, CodeSystems, ValueSets, ConceptMaps)."""
    from .ig import resources, write_package

    path = write_package(out_dir)
    if expand:
        for res in resources():
            (out_dir / f"{res['resourceType']}-{res['id']}.json").write_bytes(
                orjson.dumps(res, option=orjson.OPT_INDENT_2) + b"\n")
    click.echo(str(path))
    return EXIT_OK


@cli.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ig", "ig_package", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="IG package (.tgz) to validate against (default: the one shipped with ims-fhir).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per resource (its issues) on stdout.")
def validate_cmd(files: tuple[Path, ...], ig_package: Path | None, as_json: bool) -> int:
    """Validate FHIR files (NDJSON, a resource, a Bundle) offline against the IMS IG, with the test server's HAPI validator.

    Prints the OperationOutcome issues (errors and warnings) of each resource; exit 1 when a
    resource has an error. Needs Java 17 (and Maven once, to build the validator).
    """
    try:
        from .dev.validate import validate_files
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("ims_fhir.dev"):
            raise
        click.echo("ims-fhir validate runs the HAPI validator of the development server and is not in the installed "
                   'package: in a checkout of ims-fhir run pip install -e ".[dev]" (it also needs Java 17+)', err=True)
        return EXIT_USAGE

    errors = warnings = resources = 0
    for checked in validate_files(list(files), ig_package=ig_package):
        resources += 1
        errors += checked.errors
        warnings += checked.warnings
        if as_json:
            click.echo(orjson.dumps({"file": checked.file, "line": checked.line, "resource": checked.resource,
                                     "issues": checked.issues}).decode())
            continue
        for issue in checked.issues:
            where = f"{checked.file}:{checked.line}" if checked.line else checked.file
            click.echo(f"{where} {checked.resource} {issue['severity']}: {issue.get('diagnostics')} "
                       f"[{issue.get('expression')}]")
    click.echo(f"validated {resources} resources: {errors} errors, {warnings} warnings", err=True)
    return EXIT_REJECTED if errors else EXIT_OK


@cli.command("dev-server")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port on 127.0.0.1.")
def dev_server(port: int) -> int:
    """Build (once, cached) and run a local HAPI FHIR R4 server for trying sync (needs Java 17 and Maven).

    A development tool: it runs from a checkout of ims-fhir (pip install -e ".[dev]").
    """
    try:
        from .dev.hapi import serve_foreground
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("ims_fhir.dev"):
            raise
        click.echo("ims-fhir dev-server is a development tool and is not in the installed package: in a checkout of "
                   'ims-fhir run pip install -e ".[dev]" (it also needs Java 17+ and Maven)', err=True)
        return EXIT_USAGE
    return serve_foreground(port)


@cli.command()
@click.option("--server", required=True, metavar="URL", help="FHIR R4 base URL, e.g. https://fhir.hospital.example.org/r4.")
@click.option("--auth", "auth_spec", default="none", show_default=True, envvar="IMS_FHIR_AUTH", help=_AUTH_HELP)
@_tls_options
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Read timeout per request, seconds.")
@click.option("--patient", metavar="SYSTEM|VALUE", help="Only this patient's data (an identifier of the Patient).")
@click.option("--since", metavar="DATETIME", help="Only records changed since then (e.g. 2025-03-01T00:00:00Z).")
@click.option("--system-base", help="With --since: the clinic whose records to look for (default: every clinic "
                                    "with an Organization on the server).")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Records file (NDJSON, or a JSON document for .json); rejects, report and summary go beside it.")
@click.option("--format", "output_format", type=click.Choice(["ndjson", "json"]),
              help="ndjson (record_type first; the default) or a JSON document (the default for a .json FILE).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def pull(server: str, auth_spec: str, token_url: str | None, ca_bundle: str | None, client_cert: str | None,
         client_key: str | None, timeout: float, patient: str | None, since: str | None,
         out_file: Path, output_format: str | None, system_base: str | None, quiet: bool, as_json: bool) -> int:
    """Fetch IMS data (sessions, assessments, pain scores) from a FHIR server as ims-record/1 records."""
    from .client import ClientConfig
    from .pull import PullOptions
    from .pull import pull as run_pull

    if since is not None:
        from datetime import datetime

        try:
            datetime.fromisoformat(since)
        except ValueError as exc:
            raise click.UsageError(f"--since {since!r} is not an ISO 8601 date or date-time") from exc
    config = ClientConfig.from_values(server, auth=auth_spec, read_timeout=timeout, ca_bundle=ca_bundle,
                                      token_url=token_url, client_cert=client_cert, client_key=client_key)
    started = time.monotonic()
    summary = run_pull(config, PullOptions(out_file=out_file, patient=patient, since=since, output_format=output_format,
                                           system_base=system_base))
    elapsed = time.monotonic() - started
    if as_json:
        click.echo(orjson.dumps(summary.as_dict() | {"elapsed_seconds": round(elapsed, 3)}, option=orjson.OPT_INDENT_2))
    elif not quiet:
        kinds = ", ".join(f"{n:,} {t}" for t, n in sorted(summary.records.items())) or "none"
        click.echo(f"pulled {_count(summary.imported, 'record')} ({kinds}) from {_count(summary.read, 'resource')} "
                   f"into {out_file} "
                   f"({elapsed:.2f} s)", err=True)
        if summary.rejected:
            click.echo(f"{_count(summary.rejected, 'resource')} could not be mapped: see the .rejects.ndjson beside {out_file}",
                       err=True)
    return summary.exit_code


@cli.group()
def keys() -> None:
    """Signing keys for SMART Backend Services (private_key_jwt)."""


@keys.command("generate")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for private-key.pem (mode 0600) and jwks.json (created if missing).")
@click.option("--alg", type=click.Choice(["RS384", "ES384"]), default="RS384", show_default=True,
              help="RS384: RSA 3072 bit; ES384: EC P-384.")
@click.option("--force", is_flag=True, help="Replace key files that already exist.")
def keys_generate(out_dir: Path, alg: str, force: bool) -> int:
    """Make a key pair: keep private-key.pem secret, give jwks.json to the hospital.

    The JWKS holds only the public key, with its kid (RFC 7638 thumbprint), alg and use: sig.
    Use the key with --auth smart:CLIENT_ID:OUT/private-key.pem once the hospital has
    registered the JWKS and told you the client id.
    """
    from .client.smart import write_key_files

    key = write_key_files(out_dir, "ES384" if alg == "ES384" else "RS384", overwrite=force)
    click.echo(f"wrote {out_dir / 'private-key.pem'} (private, mode 0600) and {out_dir / 'jwks.json'} "
               f"(public; give it to the hospital): {key.alg}, kid {key.kid}", err=True)
    return EXIT_OK


@cli.command("import")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Records file; FILE.rejects.ndjson, FILE.report.ndjson and FILE.summary.json go beside it.")
@click.option("--format", "output_format", type=click.Choice(["ndjson", "json"]),
              help="ndjson (record_type first; the default) or a JSON document (the default for a .json FILE).")
@click.option("--clinic-id", help="Source clinic id of the JSON document, when the input has no clinic Organization.")
@click.option("--clinic-name", help="Source clinic name of the JSON document.")
@click.option("--system-base", help="Base of the clinic's identifier systems (chooses the clinic when there are several).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's summary as JSON on stdout.")
def import_(inputs: tuple[Path, ...], out_file: Path, output_format: str | None, clinic_id: str | None,
            clinic_name: str | None, system_base: str | None, quiet: bool, as_json: bool) -> int:
    """Import FHIR R4 (NDJSON folders, Bulk Data export, Bundles, single resources) into ims-record/1 records.

    Writes FILE, FILE.rejects.ndjson (resources and records that could not be mapped, with every
    reason), FILE.report.ndjson (elements not mapped, values assumed) and FILE.summary.json.
    """
    from .importer import ImportOptions, import_fhir, output_paths

    source = {k: v for k, v in (("clinic_id", clinic_id), ("clinic_name", clinic_name), ("system_base", system_base)) if v}
    options = ImportOptions(out_file=out_file, output_format=output_format, source=source or None)
    progress = _Progress(enabled=not quiet and not as_json and sys.stderr.isatty())
    started = time.monotonic()
    try:
        summary = import_fhir(list(inputs), options, progress=progress)
    finally:
        progress.done()
    elapsed = time.monotonic() - started
    paths = output_paths(out_file)
    if as_json:
        click.echo(orjson.dumps(summary.as_dict() | {"elapsed_seconds": round(elapsed, 3)}, option=orjson.OPT_INDENT_2))
    elif not quiet:
        kinds = ", ".join(f"{n:,} {t}" for t, n in sorted(summary.records.items())) or "none"
        click.echo(f"imported {_count(summary.imported, 'record')} ({kinds}) from {_count(summary.read, 'resource')} "
                   f"into {out_file} "
                   f"({elapsed:.2f} s)", err=True)
        if summary.rejected:
            rules = ", ".join(f"{rule} {n}" for rule, n in sorted(summary.rejected_by_rule.items()))
            click.echo(f"rejected {_count(summary.rejected, 'resource')} ({rules}): see {paths['rejects']}", err=True)
        if summary.report_by_rule:
            rules = ", ".join(f"{rule} {n}" for rule, n in sorted(summary.report_by_rule.items()))
            click.echo(f"{_count(sum(summary.report_by_rule.values()), 'element')} not mapped or assumed ({rules}): "
                       f"see {paths['report']}", err=True)
    return summary.exit_code


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), envvar="IMS_FHIR_CONFIG",
              help="TOML configuration (also IMS_FHIR_CONFIG); IMS_FHIR_* variables override it.")
@click.option("--once", is_flag=True, help="Send what is due, then exit.")
@click.option("--log-level", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def worker(config_file: Path | None, once: bool, log_level: str) -> int:
    """Run the sync worker on its own: send the service's outbox to its targets."""
    from .sync.config import load_sync_config
    from .sync.runner import configure_logging, run_worker

    config = load_sync_config(config_file)
    configure_logging(log_level)
    return run_worker(config, once=once)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv: Any = cli.main(args=args, prog_name="ims-fhir", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("ims-fhir: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except ImsFhirError as exc:
        click.echo(f"ims-fhir: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("ims-fhir: interrupted", err=True)
        return 130
    except OSError as exc:  # the machine, not the records: a full disk, a folder we may not write
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        click.echo(f"ims-fhir: error: {exc.strerror or exc}{where}; nothing after this point was written", err=True)
        return EXIT_USAGE
    except sqlite3.OperationalError as exc:  # a work store or state file on a full disk
        click.echo(f"ims-fhir: error: local store: {exc}", err=True)
        return EXIT_USAGE
    return rv if isinstance(rv, int) else EXIT_OK
