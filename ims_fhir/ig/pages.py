"""The IG's human-readable pages (``docs/ig/*.md``): one per profile, from the same rows.

Each page says, for an analyst, where each IMS field lands in FHIR (the ``fields`` table of
``mappings/profiles.toml``), what the profile fixes, and shows one example resource taken
from the converted example clinic (``examples/clinic-small``), so the page shows real output.
``python -m ims_fhir.ig.pages docs/ig`` rewrites them; a test proves the committed pages are
what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from ..terminology import Terminology, default_terminology
from . import EXTENSIONS, PACKAGE_NAME, concept_maps, profile

Resource = dict[str, Any]


def example_resources(clinic_json: Path, term: Terminology) -> dict[str, Resource]:
    """The first resource of each profile in the converted example clinic."""
    from ..mapping import MappingContext, map_organization, map_record
    from ..records.models import Source
    from ..records.validation import validate_record
    from ..records.vocabulary import LIST_KEYS

    doc = orjson.loads(clinic_json.read_bytes())
    # as convert's first pass: a session names its assessment's diagnoses
    counts = {a["id"]: len(a["diagnoses"]) for a in doc.get("assessments", []) if a.get("diagnoses")}
    ctx = MappingContext(Source.model_validate(doc["source"]), term).with_diagnoses(counts.get)
    found: dict[str, Resource] = {}
    candidates = [map_organization(ctx)]
    for record_type, key in LIST_KEYS.items():
        for data in doc.get(key, []):
            model, problems = validate_record(record_type, data)
            if not problems:
                candidates += map_record(record_type, model, ctx).resources  # type: ignore[arg-type]
    for res in candidates:
        url = res["meta"]["profile"][0]
        found.setdefault(url, res)
    return found


def _table(rows: list[list[str]]) -> str:
    out = ["| IMS field | FHIR element |", "|---|---|"]
    bar = "\\|"
    out += [f"| `{a}` | {b.replace('|', bar)} |" for a, b in rows]
    return "\n".join(out)


def profile_page(term: Terminology, key: str, example: Resource | None) -> str:
    row = term.profiles[key]
    sd = profile(term, key)
    lines = [f"# {row['title']}", "", f"Profile `{sd['url']}` on FHIR R4 `{row['type']}`.", "", row["description"], "",
             "## Where each IMS field lands", "", _table(row.get("fields", [])), "", "## What the profile fixes", ""]
    for el in sd["differential"]["element"][1:]:
        what = []
        if "min" in el:
            what.append(f"at least {el['min']}")
        for k in ("patternCodeableConcept", "patternCoding"):
            if k in el:
                codes = el[k].get("coding", [el[k]])
                what.append("pattern " + ", ".join(f"`{c['system']}#{c['code']}`" for c in codes))
        if "binding" in el:
            what.append(f"{el['binding']['strength']} binding to `{el['binding']['valueSet']}`")
        if "sliceName" in el:
            what.append(f"extension `{el['type'][0]['profile'][0]}`")
        if "short" in el and not what:
            what.append(el["short"])
        if what:
            lines.append(f"- `{el['id']}`: {'; '.join(what)}")
    if example is not None:
        lines += ["", "## Example (from examples/clinic-small)", "", "```json",
                  orjson.dumps(example, option=orjson.OPT_INDENT_2).decode(), "```"]
    return "\n".join(lines) + "\n"


def index_page(term: Terminology) -> str:
    lines = ["# IMS FHIR Implementation Guide", "",
             f"Package `{PACKAGE_NAME}` (FHIR {', '.join(['4.0.1'])}), canonical base `{term.base}`. Built from "
             "`mappings/` by `ims-fhir ig --out DIR`; every resource `ims-fhir convert` writes names one of these "
             "profiles in `meta.profile`.", "", "## Profiles", ""]
    for row in term.profiles.values():
        lines.append(f"- [{row['title']}]({row['id']}.md): `{row['type']}` ({row['id']})")
    lines += ["", "## Extensions", ""]
    for key, (title, vtype, context, description, _) in EXTENSIONS.items():
        lines.append(f"- `{term.extension_url(key)}` ({title}): {vtype} on {context}. {description}")
    lines += ["", "## Validation", "",
              "The test server and `ims-fhir validate` (HAPI FHIR's validator, offline) load this package and "
              "validate strictly: every coding of a bound CodeableConcept must be valid, and a code system the "
              "validator does not know is an **error**. The one documented exception, because their content "
              "cannot be held offline: codes of `http://loinc.org`, `http://snomed.info/sct`, "
              "`http://www.ama-assn.org/go/cpt`, `http://hl7.org/fhir/sid/icd-10-ca`, "
              "`http://hl7.org/fhir/sid/icd-10-cm` and `http://hl7.org/fhir/sid/icd-9-cm` are reported as "
              "**warnings** (\"not checked: the content of ... is not available offline\"). On the example "
              "clinic the only warnings are on `Consent.category` (LOINC 59284-0).",
              "", "## Consent policy", "",
              f"`Consent.policy.uri` = `{term.base}/{term.fhir['consent_policy']['path']}` stands for: the patient "
              "agrees (provision `permit`) or refuses (`deny`) to be needled in this one session, after the "
              "practitioner explained the procedure, its expected soreness and its risks."]
    lines += ["", "Core R4 extensions used: `http://hl7.org/fhir/StructureDefinition/bodySite` (from a body site "
              "to the BodyStructure that carries its side).", "", "## Code systems and value sets", "",
              "Every closed list of ims-record/1 is a CodeSystem `" + term.base + "/CodeSystem/ims-*` with a ValueSet "
              "of the same id under `/ValueSet/`; observation and procedure concepts are in `ims-concept`.", "",
              "## Relations to SNOMED CT and LOINC (ConceptMaps)", "",
              "| IMS code | standard code | equivalence (of the target) | note |", "|---|---|---|---|"]
    for cm in concept_maps(term):
        for group in cm["group"]:
            for el in group["element"]:
                for t in el["target"]:
                    lines.append(f"| `{el['code']}` ({group['source'].rsplit('/', 1)[1]}) | `{cm['targetUri']}#{t['code']}` "
                                 f"{t['display']} | {t['equivalence']} | {t.get('comment', '')} |")
    return "\n".join(lines) + "\n"


def write_pages(out: Path, clinic_json: Path, term: Terminology | None = None) -> list[Path]:
    term = term or default_terminology()
    out.mkdir(parents=True, exist_ok=True)
    examples = example_resources(clinic_json, term)
    written = [out / "index.md"]
    written[0].write_text(index_page(term), encoding="utf-8")
    for key, row in term.profiles.items():
        path = out / f"{row['id']}.md"
        path.write_text(profile_page(term, key, examples.get(term.profile_url(key))), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "docs" / "ig"
    for p in write_pages(target, root / "examples" / "clinic-small" / "clinic.json"):
        print(p)
