"""The local HAPI server's launcher (no server started here): the CPU priority it is given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ims_fhir.dev.hapi import _nice_autogroup


def test_the_niceness_reaches_a_session_of_its_own() -> None:
    # the launcher starts the JVM in a session of its own; on a kernel that schedules by
    # autogroup (one per session) only the autogroup's niceness lowers its share of the CPU
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],  # noqa: S603
                             start_new_session=True)
    try:
        group = Path(f"/proc/{child.pid}/autogroup")
        before = group.read_text() if group.exists() else None
        _nice_autogroup(child.pid, 7)
        if before is not None:
            assert before.strip().endswith("nice 0") and group.read_text().strip().endswith("nice 7")
        else:  # no autogroup scheduling on this kernel: nothing to set, and no error either
            assert not group.exists()
    finally:
        child.kill()
        child.wait()


def test_a_process_gone_is_no_error() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # noqa: S603
    child.wait()
    _nice_autogroup(child.pid, 5)  # its /proc entry is gone: nothing raised
