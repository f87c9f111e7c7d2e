"""CapabilityStatement checks: R4 only, interactions an operation needs, fetched once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ims_fhir.client import FhirClient, ServerCapabilities, on_type, push_requirements, system
from ims_fhir.client.capability import Requirement
from ims_fhir.errors import FhirCapabilityError, UsageError

from .scripted import Reply, ScriptedAdapter, capability_statement

BUNDLE = {"resourceType": "Bundle", "type": "transaction", "entry": []}


def test_statement_is_fetched_once_per_client(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(*[Reply(200, {"resourceType": "Patient", "id": "p1"}) for _ in range(3)])
    for _ in range(3):
        client.read("Patient", "p1")
    assert len([s for s in adapter.sent if s.url.endswith("/metadata")]) == 1
    assert adapter.sent[0].url == "https://fhir.test/r4/metadata"


@pytest.mark.parametrize("version", ["3.0.2", "4.3.0", "5.0.0", "1.0.2", "4.01"])
def test_a_server_that_is_not_r4_is_refused(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, version: str
) -> None:
    adapter.capability = capability_statement(fhir_version=version)
    client = make_client()
    with pytest.raises(FhirCapabilityError) as info:
        client.read("Patient", "p1")
    assert f"speaks FHIR {version}" in str(info.value) and "R4 (4.0.x)" in str(info.value)
    assert info.value.exit_code == 2
    assert adapter.calls() == []  # the read itself was never sent
    with pytest.raises(FhirCapabilityError):  # and stays refused, without asking again
        client.require([])
    assert len(adapter.calls(metadata=True)) == 1


@pytest.mark.parametrize("version", ["4.0.0", "4.0.1"])
def test_r4_versions_are_accepted(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, version: str
) -> None:
    adapter.capability = capability_statement(fhir_version=version)
    assert make_client().capabilities().fhir_version == version


def test_a_server_without_transaction_is_refused(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter
) -> None:
    adapter.capability = capability_statement(system_interactions=("batch",))
    client = make_client()
    with pytest.raises(FhirCapabilityError, match="system interaction 'transaction'"):
        client.transaction(BUNDLE)
    assert adapter.calls("POST") == []


def test_require_lists_everything_missing(make_client: Callable[..., FhirClient], adapter: ScriptedAdapter) -> None:
    adapter.capability = capability_statement(
        system_interactions=(), types=("Patient", "Procedure"), interactions=["read", "create"], conditional=False
    )
    with pytest.raises(FhirCapabilityError) as info:
        make_client().require(push_requirements(["Patient", "Observation"]))
    text = str(info.value)
    for gap in (
        "system interaction 'transaction'",
        "conditional create on Patient",
        "update on Patient",
        "search-type on Patient",
        "conditional create on Observation",
    ):
        assert gap in text
    assert "(Scripted 1)" in text


def test_require_passes_for_a_capable_server(client: FhirClient) -> None:
    capabilities = client.require(push_requirements(["Patient", "Procedure"], conditional_update=True))
    assert capabilities.is_r4 and "transaction" in capabilities.system_interactions


def test_conditional_update_needs_its_flag(make_client: Callable[..., FhirClient], adapter: ScriptedAdapter) -> None:
    adapter.capability = capability_statement(conditional=False)
    with pytest.raises(FhirCapabilityError, match="conditional update on Patient"):
        make_client().conditional_update("Patient", {"identifier": "s|1"}, {"resourceType": "Patient"})


def test_checks_can_be_turned_off(make_client: Callable[..., FhirClient], adapter: ScriptedAdapter) -> None:
    adapter.capability = capability_statement(fhir_version="3.0.2")
    adapter.queue(Reply(200, {"resourceType": "Patient", "id": "p1"}))
    make_client(check_capabilities=False).read("Patient", "p1")
    assert adapter.calls(metadata=True)[0].url.endswith("/Patient/p1")


def test_metadata_that_is_not_a_capability_statement(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter
) -> None:
    adapter.capability = {"resourceType": "OperationOutcome", "issue": []}
    with pytest.raises(FhirCapabilityError, match="did not return a CapabilityStatement"):
        make_client().capabilities()


def test_statement_without_version() -> None:
    statement = capability_statement()
    del statement["fhirVersion"]
    capabilities = ServerCapabilities.from_statement(statement, base_url="https://x")
    with pytest.raises(FhirCapabilityError, match="does not state its FHIR version"):
        capabilities.require([])


def test_requirement_validation() -> None:
    assert system("transaction").describe() == "system interaction 'transaction'"
    assert on_type("Patient", "create", conditional=True).describe() == "conditional create on Patient"
    with pytest.raises(UsageError):
        Requirement("read")  # a type interaction without a type
    with pytest.raises(UsageError):
        on_type("Patient", "read", conditional=True)
