"""IMS records -> FHIR R4 resources (plain dicts), one module per record type.

The mappers are pure: a validated record and a :class:`MappingContext` in, a
:class:`MappedRecord` (resources in a fixed order + dependencies) out. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from .assessment import map_assessment
from .context import Dependency, MappedRecord, MappingContext, MappingOptions, Resource, resource_id
from .people import map_organization, map_patient, map_practitioner
from .treatment import map_treatment, muscle_count

_MAPPERS: dict[str, Callable[..., MappedRecord]] = {
    "patient": map_patient,
    "practitioner": map_practitioner,
    "assessment": map_assessment,
    "treatment": map_treatment,
}


def map_record(record_type: str, record: BaseModel, ctx: MappingContext) -> MappedRecord:
    """Map one validated record of ``record_type`` to its FHIR resources."""
    return _MAPPERS[record_type](record, ctx)


__all__ = [
    "Dependency",
    "MappedRecord",
    "MappingContext",
    "MappingOptions",
    "Resource",
    "map_organization",
    "map_record",
    "muscle_count",
    "resource_id",
]
