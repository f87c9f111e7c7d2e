"""The normal form of a record, in which IMS -> FHIR -> IMS is the identity.

The round trip is a law, tested over the whole record space::

    reverse(forward(r)) == normalise(r)      for every valid record r
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ..records.models import record_dict
from ..records.validation import validate_record


def normalise(record_type: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as an import gives it back. Raises ValueError for an invalid record.

    Rules (each one a choice of the forward mapping that the import cannot undo):

    1. The record goes through the record models and comes out in the JSON-document
       shape (``record_dict``): an optional field that is ``null`` is left out (``null``
       means "not recorded").
    2. Defaults are made explicit: an assessment without ``status`` has ``"final"``, a
       treatment without ``status`` has ``"completed"``.
    3. Date-times are normalised as the models do (``datetime.fromisoformat(...).isoformat()``):
       ``Z`` becomes ``+00:00``, a zero fraction of a second is dropped, seconds are
       written out (``T09:30-08:00`` -> ``T09:30:00-08:00``). The offset is kept as given.
    4. Numbers of the format's decimal fields (``duration_weeks``, ``degrees``, ``score``,
       needle sizes, stimulation) are floats: ``6`` and ``6.0`` are the same number and
       are compared as numbers.
    5. An empty list is left out: ``identifiers``, ``given_names``, ``pain.locations``,
       ``candidacy.contraindications``, ``sites``, ``adverse_events`` and the finding
       lists emit nothing in FHIR when empty, so ``[]`` reads back as "not recorded".

    6. Texts (names, identifier values, notes, complaints, diagnosis codes) lose whitespace
       at their ends, as the record models do when they read a record (FHIR strings should
       not start or end with whitespace). The clinic id is kept exactly: it is part of
       every identity.

    Nothing else changes: texts keep every other character, lists keep their order and
    their repeats.
    """
    model, problems = validate_record(record_type, copy.deepcopy(dict(record)))
    if model is None:
        raise ValueError(f"not a valid {record_type}: " + "; ".join(f"{p.path}: {p.message}" for p in problems))
    normal: dict[str, Any] = _without_empty_lists(record_dict(model))
    return normal


def normalise_source(source: Mapping[str, Any]) -> dict[str, Any]:
    """The source as an import recovers it from the clinic's Organization.

    ``system_base`` loses a trailing ``/`` (the identifier systems are built without it), and
    ``clinic_name`` is left out when it is absent or equal to ``clinic_id`` (the Organization's
    name is the clinic id when the clinic has no name).
    """
    out: dict[str, Any] = {"clinic_id": source["clinic_id"]}
    name = source.get("clinic_name")
    if name is not None and name != source["clinic_id"]:
        out["clinic_name"] = name
    out["system_base"] = str(source["system_base"]).rstrip("/")
    for key in ("country", "jurisdiction"):
        if source.get(key) is not None:
            out[key] = source[key]
    return out


def _without_empty_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_empty_lists(v) for k, v in value.items() if v != []}
    if isinstance(value, list):
        return [_without_empty_lists(v) for v in value]
    return value
