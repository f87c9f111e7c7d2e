"""The OpenAPI document is kept in step with the app's routes."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient

from .conftest import rw


def _routes(app: Flask) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            out.add((path, method.lower()))
    return out


def test_every_route_is_in_the_document_and_every_documented_path_is_a_route(app: Flask, client: FlaskClient) -> None:
    doc = client.get("/openapi.json", headers=rw()).json
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert _routes(app) == documented


def test_the_document_is_openapi_3_1_with_the_error_shape(client: FlaskClient) -> None:
    doc = client.get("/openapi.json", headers=rw()).json
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["schemas"]["OperationOutcome"]["properties"]["resourceType"] == {"const": "OperationOutcome"}
    assert doc["paths"]["/health"]["get"]["security"] == [] and doc["paths"]["/ready"]["get"]["security"] == []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op.get("responses"), (path, method)
