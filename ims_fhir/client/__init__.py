"""The FHIR R4 REST client of ims-fhir: requests-based, with auth, retries and typed errors.

Modules: :mod:`.config` (ClientConfig, Timeout), :mod:`.auth` (auth schemes),
:mod:`.auth_spec` (the ``--auth`` string), :mod:`.retry` (RetryPolicy, Clock),
:mod:`.transport` (session, retry loop), :mod:`.errors` (status -> exception),
:mod:`.capability` (CapabilityStatement checks), :mod:`.response` (FhirResponse),
:mod:`.bundles` (search pages, transaction chunks), :mod:`.fhir_client` (FhirClient).

Typical use::

    config = ClientConfig.from_values("https://fhir.example.org/r4", auth="bearer:env:FHIR_TOKEN")
    with FhirClient(config) as client:
        client.require(push_requirements(["Patient", "Procedure"]))
        for bundle in transaction_bundles(entries, 100):
            for entry in client.transaction(bundle).entries():
                ...
"""

from ims_fhir.client.auth import (
    AccessToken,
    Auth,
    AuthContext,
    BasicAuth,
    BearerTokenAuth,
    CachedTokenAuth,
    NoAuth,
    OAuth2ClientCredentials,
)
from ims_fhir.client.auth_spec import AUTH_SPEC_HELP, parse_auth_spec
from ims_fhir.client.bundles import SearchPage, chunk_entries, next_link, transaction_bundle, transaction_bundles
from ims_fhir.client.capability import (
    Requirement,
    ServerCapabilities,
    TypeCapability,
    delivery_requirements,
    on_type,
    push_requirements,
    system,
)
from ims_fhir.client.config import DEFAULT_USER_AGENT, ClientConfig, Timeout, normalize_base_url
from ims_fhir.client.fhir_client import FhirClient, Prefer, Query, encode_query
from ims_fhir.client.response import EntryResponse, FhirResponse
from ims_fhir.client.retry import Clock, RetryPolicy, parse_retry_after
from ims_fhir.client.transport import FHIR_JSON, Transport

__all__ = [
    "AUTH_SPEC_HELP",
    "DEFAULT_USER_AGENT",
    "FHIR_JSON",
    "AccessToken",
    "Auth",
    "AuthContext",
    "BasicAuth",
    "BearerTokenAuth",
    "CachedTokenAuth",
    "ClientConfig",
    "Clock",
    "EntryResponse",
    "FhirClient",
    "FhirResponse",
    "NoAuth",
    "OAuth2ClientCredentials",
    "Prefer",
    "Query",
    "Requirement",
    "RetryPolicy",
    "SearchPage",
    "ServerCapabilities",
    "Timeout",
    "Transport",
    "TypeCapability",
    "chunk_entries",
    "delivery_requirements",
    "encode_query",
    "next_link",
    "normalize_base_url",
    "on_type",
    "parse_auth_spec",
    "parse_retry_after",
    "push_requirements",
    "system",
    "transaction_bundle",
    "transaction_bundles",
]
