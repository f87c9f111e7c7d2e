"""``ims-fhir serve``: the service's own command, plugged into the ``ims-fhir`` command line.

The library never imports this package: ``pyproject.toml`` registers :func:`serve` under the
entry-point group ``ims_fhir.commands`` and :mod:`ims_fhir.cli` loads it by that name only
when the command is asked for (so ``ims-fhir worker`` and the rest run without Flask).
"""

from __future__ import annotations

from pathlib import Path

import click

from ims_fhir.sync.runner import configure_logging

from .config import load_config
from .runner import serve as run_serve


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), envvar="IMS_FHIR_CONFIG",
              help="TOML configuration (also IMS_FHIR_CONFIG); IMS_FHIR_* variables override it.")
@click.option("--no-worker", is_flag=True, help="Serve the API only; run `ims-fhir worker` beside it.")
@click.option("--log-level", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def serve(config_file: Path | None, no_worker: bool, log_level: str) -> int:
    """Run the sync service (API, dashboard and the sync worker) with waitress (extra: ims-fhir[service])."""
    config = load_config(config_file)
    configure_logging(log_level, config.server.log_format)
    return run_serve(config, with_worker=False if no_worker else None)
