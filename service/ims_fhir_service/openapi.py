"""The OpenAPI 3.1 document of the service, served at ``/openapi.json``.

Kept in step with the app by ``tests/service/test_openapi.py``: every route of the app is
in the document and every path of the document is a route.
"""

from __future__ import annotations

from typing import Any

from ims_fhir import __version__

_OUTCOME = {"$ref": "#/components/schemas/OperationOutcome"}


def _error(text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/fhir+json": {"schema": _OUTCOME}}}


_AUTH_ERRORS = {"401": _error("no bearer token, or a token that is not valid"),
                "403": _error("the token is read-only")}
_RECORD_PARAMS = [
    {"name": "record_type", "in": "path", "required": True,
     "schema": {"type": "string", "enum": ["patient", "practitioner", "assessment", "treatment"]}},
    {"name": "record_id", "in": "path", "required": True, "schema": {"type": "string"}},
]
_TARGET_PARAM = {"name": "target", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "only this configured target"}
_HTML = {"content": {"text/html": {"schema": {"type": "string"}}}}
_DASHBOARD = ["dashboard"]
_SESSION: list[dict[str, list[str]]] = [{"session": []}]


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ims-fhir sync service",
            "version": __version__,
            "description": "Posts Gunn IMS records (ims-record/1) into a durable outbox; a worker sends them to the "
                           "configured FHIR R4 servers as transaction Bundles and keeps a ledger of each record's "
                           "state per target. Errors are FHIR OperationOutcomes.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/records": {"post": {
                "summary": "Post one record, an array, an ims-record/1 document or NDJSON",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"oneOf": [{"type": "object"}, {"type": "array"}]}},
                    "application/x-ndjson": {"schema": {"type": "string"}}}},
                "responses": {
                    "202": {"description": "every record valid; stored and queued (or unchanged)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}},
                    "400": _error("the body is not JSON or NDJSON"),
                    "413": _error("the body is larger than server.max_body_bytes"),
                    "422": _error("some records are invalid (error issues: every reason, with the field path in "
                                  "expression and the record's place in the body in location); the valid records of "
                                  "the batch were stored (information issues)"),
                    **_AUTH_ERRORS}}},
            "/records/{record_type}/{record_id}": {"get": {
                "summary": "Sync state of one record per target, with its history",
                "parameters": _RECORD_PARAMS,
                "responses": {"200": {"description": "the record's state",
                                      "content": {"application/json": {
                                          "schema": {"$ref": "#/components/schemas/RecordStatus"}}}},
                              "404": _error("no such record was posted"), **_AUTH_ERRORS}}},
            "/records/{record_type}/{record_id}/retry": {"post": {
                "summary": "Queue a record's failed or dead deliveries again",
                "parameters": [*_RECORD_PARAMS, _TARGET_PARAM],
                "responses": {"202": {"description": "queued again", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Requeued"}}}},
                    "404": _error("no such record"), "422": _error("unknown target"), **_AUTH_ERRORS}}},
            "/retry": {"post": {
                "summary": "Queue every failed or dead delivery again",
                "parameters": [{"name": "state", "in": "query", "required": True,
                                "schema": {"type": "string", "enum": ["dead", "failed"]}}, _TARGET_PARAM],
                "responses": {"202": {"description": "queued again", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Requeued"}}}},
                    "422": _error("state missing or unknown target"), **_AUTH_ERRORS}}},
            "/pull": {"post": {
                "summary": "Import from a configured target back into IMS records",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "required": ["target"], "properties": {
                        "target": {"type": "string", "description": "name of a configured target"},
                        "patient": {"type": "string"}, "since": {"type": "string", "format": "date-time"}}}}}},
                "responses": {"200": {"description": "the IMS records imported, those the import rejected, and the "
                                                     "import's summary", "content": {"application/json": {"schema": {
                                          "type": "object", "properties": {
                                              "target": {"type": "string"}, "summary": {"type": "object"},
                                              "records": {"type": "array", "items": {"type": "object"}},
                                              "rejects": {"type": "array", "items": {"type": "object"}}}}}}},
                              "422": _error("no such target, or a bad patient/since"),
                              "502": _error("the target failed"), **_AUTH_ERRORS}}},
            "/health": {"get": {"summary": "Liveness", "security": [],
                                "responses": {"200": {"description": "the process answers"}}}},
            "/ready": {"get": {"summary": "Readiness: storage and every target's /metadata reachable",
                               "security": [],
                               "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text format 0.0.4)",
                                 "responses": {"200": {"description": "metrics",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}},
                                               **_AUTH_ERRORS}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1"}, **_AUTH_ERRORS}}},
            "/": {"get": {"tags": _DASHBOARD, "summary": "Dashboard (after logging in)", "security": _SESSION,
                          "responses": {"200": {"description": "the dashboard", **_HTML},
                                        "302": {"description": "to the login form"}}}},
            "/login": {
                "get": {"tags": _DASHBOARD, "summary": "Login form", "security": [],
                        "responses": {"200": {"description": "the form", **_HTML}}},
                "post": {"tags": _DASHBOARD, "summary": "Log in with an API token (sets the session cookie)",
                         "security": [],
                         "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": {
                             "type": "object", "properties": {"token": {"type": "string"}}}}}},
                         "responses": {"302": {"description": "to the dashboard"},
                                       "401": {"description": "the form again, token not valid", **_HTML}}}},
            "/logout": {"post": {"tags": _DASHBOARD, "summary": "End the session", "security": _SESSION,
                                 "responses": {"302": {"description": "to the login form"}}}},
            "/ui/records/{record_type}/{record_id}": {"get": {
                "tags": _DASHBOARD, "summary": "One record's state and history", "security": _SESSION,
                "parameters": _RECORD_PARAMS,
                "responses": {"200": {"description": "the page", **_HTML}, "404": {"description": "no such record"}}}},
            "/ui/lookup": {"get": {
                "tags": _DASHBOARD, "summary": "Find a record by type and id", "security": _SESSION,
                "parameters": [{"name": "record_type", "in": "query", "schema": {"type": "string"}},
                               {"name": "record_id", "in": "query", "schema": {"type": "string"}}],
                "responses": {"302": {"description": "to the record's page"}}}},
            "/ui/records/{record_type}/{record_id}/retry": {"post": {
                "tags": _DASHBOARD, "summary": "Retry button of a failure (form with the CSRF token)",
                "security": _SESSION, "parameters": _RECORD_PARAMS,
                "responses": {"303": {"description": "back to the dashboard"}, "403": {"description": "CSRF or scope"}}}},
            "/ui/retry-dead": {"post": {
                "tags": _DASHBOARD, "summary": "Retry every dead record (form with the CSRF token)",
                "security": _SESSION,
                "responses": {"303": {"description": "back to the dashboard"}, "403": {"description": "CSRF or scope"}}}},
            "/static/{filename}": {"get": {
                "tags": _DASHBOARD, "summary": "The dashboard's stylesheet and script", "security": [],
                "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the file"}}}},
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "an API token from the configuration (scope read or read-write)"},
                "session": {"type": "apiKey", "in": "cookie", "name": "ims_fhir_session"},
            },
            "schemas": {
                "OperationOutcome": {"type": "object", "required": ["resourceType", "issue"], "properties": {
                    "resourceType": {"const": "OperationOutcome"},
                    "issue": {"type": "array", "items": {"type": "object", "properties": {
                        "severity": {"type": "string"}, "code": {"type": "string"},
                        "details": {"type": "object"}, "diagnostics": {"type": "string"},
                        "location": {"type": "array", "items": {"type": "string"}},
                        "expression": {"type": "array", "items": {"type": "string"}}}}}}},
                "Accepted": {"type": "object", "properties": {
                    "accepted": {"type": "integer"}, "queued": {"type": "integer"}, "unchanged": {"type": "integer"},
                    "rejected": {"type": "integer"},
                    "records": {"type": "array", "items": {"type": "object", "properties": {
                        "record_type": {"type": "string"}, "id": {"type": "string"}, "origin": {"type": "string"},
                        "result": {"enum": ["queued", "unchanged"]}, "revision": {"type": "integer"},
                        "status": {"type": "string", "description": "URL of the record's status"}}}}}},
                "Requeued": {"type": "object", "properties": {"requeued": {"type": "integer"}}},
                "RecordStatus": {"type": "object", "properties": {
                    "record_type": {"type": "string"}, "id": {"type": "string"}, "revision": {"type": "integer"},
                    "received_at": {"type": "string"}, "updated_at": {"type": "string"},
                    "targets": {"type": "array", "items": {"type": "object", "properties": {
                        "target": {"type": "string"},
                        "state": {"enum": ["queued", "sending", "synced", "failed", "dead"]},
                        "attempts": {"type": "integer"}, "record_revision": {"type": "integer"},
                        "synced_revision": {"type": "integer"}, "server_id": {"type": "string"},
                        "server_version": {"type": "string"}, "resources": {"type": "array"},
                        "http_status": {"type": "integer"}, "error": {"type": "string"}, "outcome": _OUTCOME,
                        "queued_at": {"type": "string"}, "updated_at": {"type": "string"},
                        "synced_at": {"type": "string"}}}},
                    "history": {"type": "array", "items": {"type": "object"}}}},
            },
        },
    }
