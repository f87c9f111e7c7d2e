"""``ims-fhir validate``: FHIR files checked offline by the HAPI validator of the test server.

Terms:

- *offline validator*: ``org.imsfhir.hapi.OfflineValidator`` in the hapi-server module, run
  from the same built jar as the dev server (``java -cp JAR -Dloader.main=... PropertiesLauncher``),
  so it validates exactly as the strict test server does: base R4, the IMS IG package's
  profiles, CodeSystems and ValueSets, unknown code systems as errors, external ones
  (LOINC, SNOMED CT, CPT, ICD) as warnings because their content is not available offline.
- *issue*: one entry of a resource's OperationOutcome: severity, code, diagnostics, expression.

Needs Java 17 (and Maven the first time, to build the jar; see :mod:`ims_fhir.dev.hapi`).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ToolchainError
from . import hapi as devserver

MAIN_CLASS = "org.imsfhir.hapi.OfflineValidator"
#: Spring Boot's classic launcher in the repackaged jar, able to start another main class
LAUNCHER = "org.springframework.boot.loader.PropertiesLauncher"


@dataclass(frozen=True, slots=True)
class Checked:
    """The issues of one resource."""

    file: str
    line: int
    resource: str
    issues: list[dict[str, Any]]

    @property
    def errors(self) -> int:
        return sum(1 for i in self.issues if i.get("severity") in ("error", "fatal"))

    @property
    def warnings(self) -> int:
        return sum(1 for i in self.issues if i.get("severity") == "warning")


def validate_files(files: Sequence[Path], *, ig_package: Path | None = None,
                   artifact: Path | None = None, timeout: float = 3600.0) -> Iterator[Checked]:
    """Validate the resources of ``files``; yields one :class:`Checked` per resource, in file order.

    Raises :class:`ToolchainError` when Java is missing or the validator cannot run.
    """
    toolchain = devserver.check_toolchain(need_maven=artifact is None)
    artifact = artifact or devserver.build()
    if ig_package is None:
        from ..ig import BUILT_PACKAGE

        ig_package = BUILT_PACKAGE
    command = [toolchain.java, "-Xmx1g", "-XX:+UseSerialGC", "-cp", str(artifact), f"-Dloader.main={MAIN_CLASS}",
               LAUNCHER, "--ig", str(ig_package), *[str(Path(f).resolve()) for f in files]]
    try:
        # no shell; the arguments are the java found by check_toolchain, our jar and the given paths
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"the offline validator did not run: {exc}") from exc
    if proc.returncode not in (0, 1):
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise ToolchainError(f"the offline validator failed (exit {proc.returncode}): {tail}")
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            data = json.loads(line)
            yield Checked(data["file"], int(data["line"]), data["resource"], list(data["issues"]))
