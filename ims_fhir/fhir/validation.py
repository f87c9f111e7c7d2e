"""R4 model validation of generated resources with ``fhir.resources`` (R4B models).

This is the one place that imports ``fhir.resources``. The converter builds resources as
plain dicts for speed; tests validate every resource kind here, and ``--validate`` runs
it on every resource at run time. An error here means a mapping bug, so the record is
rejected with the validator's words rather than written out.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from ..errors import Problem


@lru_cache(maxsize=64)
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def validate_resource(resource: dict[str, Any]) -> list[Problem]:
    """Problems of one resource against the R4 (R4B) models; [] when valid."""
    rtype = resource.get("resourceType")
    try:
        model = _model(str(rtype))
    except (KeyError, ValueError, LookupError):
        return [Problem("resourceType", "fhir_validation", f"{rtype!r} is not a FHIR resource type")]
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return [
            Problem(
                f"{rtype}." + ".".join(str(p) for p in err["loc"]),
                "fhir_validation",
                err["msg"],
            )
            for err in exc.errors(include_url=False)
        ]
    return []
