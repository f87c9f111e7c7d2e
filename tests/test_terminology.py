"""The code tables: checked at load, and the only source of the codes the mappers emit."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ims_fhir.errors import TerminologyError
from ims_fhir.fhir.validation import validate_resource
from ims_fhir.records import vocabulary as v
from ims_fhir.terminology import code_systems, default_terminology, load_terminology, mappings_dir

STANDARD = {"http://loinc.org", "http://snomed.info/sct", "http://www.ama-assn.org/go/cpt"}
#: The project's terminology record: every standard code it emits, with source and confidence.
TERMINOLOGY_DOC = Path(__file__).resolve().parents[1] / "docs" / "terminology.md"


def _copy_tables(tmp_path: Path) -> Path:
    dst = tmp_path / "mappings"
    shutil.copytree(mappings_dir(), dst)
    return dst


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.replace("[muscle.concepts.piriformis]\ndisplay = \"Piriformis\"\n", ""), "no row for slug 'piriformis'"),
    (lambda s: s + "\n[muscle.concepts.bicepz]\ndisplay = \"Bicepz\"\n", "bicepz is not a slug"),
    (lambda s: s.replace('display = "Deltoid"', 'display = ""'), "deltoid has no display"),
    (lambda s: s.replace('code = "6423006"', 'code = "35259002"'), "used for both"),
    (lambda s: s.replace('confidence = "medium", source = "SlicerTotalSegmentator',
                         'confidence = "low", source = "SlicerTotalSegmentator'),
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
            # severity: HL7 adverse-event-severity, whose codes are the record's slugs
            cc = term.adverse_event_severity(slug) if vocabulary == "severity" else term.vocab(vocabulary, slug)
            assert cc["coding"][0]["code"] == slug and cc["text"]


def _doc_table(heading: str) -> list[dict[str, str]]:
    """The rows of the Markdown table under ``## heading`` in docs/terminology.md, by column name."""
    text = TERMINOLOGY_DOC.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert all(len(row) == len(header) for row in rows), heading
    return [dict(zip(header, row, strict=True)) for row in rows]


def _standard_rows() -> list[tuple[str, dict[str, Any]]]:
    """Every LOINC/SNOMED CT/CPT coding the tables can emit, as (system URI, table row)."""
    tables = {name: tomllib.loads((mappings_dir() / f"{name}.toml").read_text(encoding="utf-8"))
              for name in ("vocabularies", "concepts", "fhir")}
    systems = tables["fhir"]["systems"]
    rows = [std for table in tables["vocabularies"].values() if isinstance(table, dict)
            for row in table.get("concepts", {}).values() for std in row.get("standard", [])]
    rows += [std for row in tables["concepts"]["concepts"].values() for std in row.get("standard", [])]
    found = [(systems[std["system"]], std) for std in rows]
    fixed = tables["fhir"]["procedure_category"]
    found.append((systems[fixed["system"]], {**fixed, "confidence": None}))
    return found


def test_standard_codes_are_the_recorded_ones() -> None:
    """Each LOINC/SNOMED/CPT code of the tables is in docs/terminology.md, same display, high or medium; and back."""
    doc = {(row["system"].strip("`"), row["code"]): row for row in _doc_table("Standard codes the project emits")}
    assert len(doc) >= 20
    for row in doc.values():
        assert row["confidence"] in ("high", "medium"), row
        assert row["source"] and row["display"] and row["used for"], row
    tables = _standard_rows()
    for system, std in tables:
        recorded = doc.get((system, std["code"]))
        assert recorded is not None, f"{system}|{std['code']} is emitted but not in {TERMINOLOGY_DOC.name}"
        assert recorded["display"] == std["display"], (std["code"], recorded["display"], std["display"])
        if std["confidence"] is not None:
            assert recorded["confidence"] == std["confidence"], std["code"]
    emitted = {(system, std["code"]) for system, std in tables}
    assert set(doc) == emitted, f"listed in {TERMINOLOGY_DOC.name} but not in the tables: {sorted(set(doc) - emitted)}"
    term = default_terminology()
    codings = [c for cc in list(term.vocab_concepts.values()) + list(term.concepts.values()) for c in cc["coding"]]
    assert {(c["system"], c["code"]) for c in codings if c["system"] in STANDARD} <= emitted


def test_fixed_fhir_codes_and_systems_are_recorded() -> None:
    fhir = tomllib.loads((mappings_dir() / "fhir.toml").read_text(encoding="utf-8"))
    systems = {row["URI"].strip("`") for row in _doc_table("Code systems")}
    assert set(fhir["systems"].values()) <= systems
    rows = _doc_table("FHIR codes from the specification")
    recorded = {(row["system"].strip("`"), row["code"], row["display"]) for row in rows}
    fixed = [*fhir["categories"].values(), fhir["encounter_class"], fhir["chart_identifier_type"],
             *fhir["provenance_activity"].values(), *fhir["provenance_agent"].values()]
    for row in fixed:
        assert (fhir["systems"][row["system"]], row["code"], row["display"]) in recorded, row


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
