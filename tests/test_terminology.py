"""The code tables: checked at load, and the only source of the codes the mappers emit."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from ims_fhir.errors import TerminologyError
from ims_fhir.fhir.validation import validate_resource
from ims_fhir.records import vocabulary as v
from ims_fhir.terminology import code_systems, default_terminology, load_terminology, mappings_dir

STANDARD = {"http://loinc.org", "http://snomed.info/sct", "http://www.ama-assn.org/go/cpt"}
TERMINOLOGY_DOC = Path(__file__).resolve().parents[2] / "shared" / "ims-terminology.md"


def _copy_tables(tmp_path: Path) -> Path:
    dst = tmp_path / "mappings"
    shutil.copytree(mappings_dir(), dst)
    return dst


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.replace("[muscle.concepts.piriformis]\ndisplay = \"Piriformis\"\n", ""), "no row for slug 'piriformis'"),
    (lambda s: s + "\n[muscle.concepts.bicepz]\ndisplay = \"Bicepz\"\n", "bicepz is not a slug"),
    (lambda s: s.replace('display = "Deltoid"', 'display = ""'), "deltoid has no display"),
    (lambda s: s.replace('code = "6423006"', 'code = "35259002"'), "used for both"),
    (lambda s: s.replace('confidence = "medium", source = "SlicerTotalSegmentator', 'confidence = "low", source = "SlicerTotalSegmentator'),
     "only high or medium"),
])
def test_broken_tables_fail_at_load(tmp_path: Path, edit: Any, message: str) -> None:
    tables = _copy_tables(tmp_path)
    path = tables / "vocabularies.toml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(TerminologyError, match=re.escape(message)):
        load_terminology(tables)


def test_every_slug_of_the_format_has_a_coding() -> None:
    term = default_terminology()
    for vocabulary, slugs in v.VOCABULARIES.items():
        if vocabulary in ("sex", "assessment_status", "treatment_status"):
            continue
        for slug in slugs:
            cc = term.vocab(vocabulary, slug)
            assert cc["coding"][0]["code"] == slug and cc["text"]


def test_standard_codes_are_the_researched_ones() -> None:
    """Each LOINC/SNOMED/CPT code in the tables appears in the terminology research (no made-up codes)."""
    if not TERMINOLOGY_DOC.exists():
        pytest.fail(f"{TERMINOLOGY_DOC} is missing: it is the source every standard code must be traced to")
    doc = TERMINOLOGY_DOC.read_text()
    term = default_terminology()
    codings = [c for cc in list(term.vocab_concepts.values()) + list(term.concepts.values()) for c in cc["coding"]]
    standard = [c for c in codings if c["system"] in STANDARD]
    assert len(standard) >= 20
    for c in standard:
        assert re.search(rf"(?<![\d-]){re.escape(c['code'])}(?![\d-])", doc), c


def test_reverse_lookup_inverts_forward() -> None:
    term = default_terminology()
    for (vocabulary, slug), cc in term.vocab_concepts.items():
        for coding in cc["coding"]:
            assert term.decode(coding["system"], coding["code"]) == (vocabulary, slug)


def test_published_code_systems_are_valid_and_complete() -> None:
    term = default_terminology()
    systems = code_systems(term)
    urls = {cs["url"] for cs in systems}
    for cs in systems:
        assert validate_resource(cs) == []
        assert cs["count"] == len(cs["concept"])
    emitted = {c["system"] for cc in list(term.vocab_concepts.values()) + list(term.concepts.values()) for c in cc["coding"]}
    assert {s for s in emitted if s.startswith(term.base)} <= urls
