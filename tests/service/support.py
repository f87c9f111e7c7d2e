"""Helpers shared by the service tests: log capture, and the check that logs name no patient."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def artifacts() -> Path:
    """``test-artifacts/`` (screenshots, logs of test runs), kept out of git by its own .gitignore."""
    ARTIFACTS.mkdir(exist_ok=True)
    ignore = ARTIFACTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# written by the test suite: nothing here is committed\n*\n", encoding="utf-8")
    return ARTIFACTS


@contextmanager
def captured_logs(name: str) -> Iterator[Path]:
    """Everything logged meanwhile (DEBUG, every logger) goes to ``test-artifacts/<name>.log``."""
    path = artifacts() / f"{name}.log"
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def personal_data(records: Iterable[dict[str, Any]]) -> set[str]:
    """Names and birth dates of the patients and practitioners among ``records``."""
    found: set[str] = set()
    for rec in records:
        if rec.get("record_type", "patient") not in ("patient", "practitioner"):
            continue
        for key in ("family_name", "birth_date", "phone", "email"):
            if rec.get(key):
                found.add(str(rec[key]))
        found.update(str(g) for g in rec.get("given_names") or ())
    return found


def leaks(text: str, secrets: set[str]) -> list[str]:
    """The items of ``secrets`` that occur in ``text`` as whole words."""
    return sorted(s for s in secrets if re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", text))
