"""The sending engine (ims_fhir.delivery) against a scripted endpoint: outcomes, splitting, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import requests

from ims_fhir.delivery import (
    HAPI_AMBIGUOUS_MATCH,
    EntryResult,
    Sender,
    is_ambiguous_match,
    operation_outcome,
    record_parts,
    status_of,
)
from ims_fhir.errors import FhirAuthError, FhirServerSideError, FhirUnprocessableError
from tests.client.scripted import FakeClock, Reply

from .support import SCHEME, Server, bundles_of, client_on, entry_response, example_records, has, refusal
from .support import urn_references_resolve as self_contained

P1, P2 = ("patient", "P000001"), ("patient", "P000002")
PR1, PR2 = ("practitioner", "PR0001"), ("practitioner", "PR0002")
A1, A2 = ("assessment", "A0000001"), ("assessment", "A0000002")
T1, T3 = ("treatment", "T00000001"), ("treatment", "T00000003")
KEYS = [P1, P2, PR1, PR2, A1, A2, T1, T3]


@pytest.fixture
def bundle(tmp_path: Path) -> dict[str, Any]:
    (only,) = bundles_of(tmp_path, example_records(*KEYS))
    return only


@pytest.fixture
def sender(session: requests.Session, clock: FakeClock) -> Sender:
    return Sender(client_on(session, clock))


def _bad_treatment(record: tuple[str, str]) -> Any:
    def rule(bundle: dict[str, Any]) -> Reply | None:
        if has(bundle, "Procedure", record):
            return refusal(422, "processing", "Procedure.status: unknown code", ["Procedure.status"])
        return None
    return rule


def test_a_transaction_that_goes_through_gives_every_entry_its_outcome(
        bundle: dict[str, Any], server: Server, sender: Sender) -> None:
    def answer(entry: dict[str, Any]) -> dict[str, Any]:
        rtype = entry["resource"]["resourceType"]
        if rtype in ("Organization", "Practitioner"):
            return entry_response(entry, 200)  # a conditional create that matched: referenced, unchanged
        if rtype == "Encounter":
            return entry_response(entry, 200, "2", outcome_code="SUCCESSFUL_UPDATE_NO_CHANGE")
        if rtype == "Observation":
            return entry_response(entry, 200, "3")
        return entry_response(entry, 201)

    server.answer = answer
    result = sender.send(bundle)
    assert len(server.transactions) == 1 and result.refusals == []
    outcomes = {(e.resource_type, e.outcome) for e in result.entries}
    assert outcomes == {("Organization", "unchanged"), ("Practitioner", "unchanged"), ("Encounter", "unchanged"),
                        ("Observation", "updated"), ("Patient", "created"), ("Procedure", "created"),
                        ("Consent", "created"), ("Condition", "created"), ("BodyStructure", "created"),
                        ("AdverseEvent", "created"), ("EpisodeOfCare", "created"), ("ServiceRequest", "created")}
    procedure = next(e for e in result.entries if e.resource_type == "Procedure" and e.record == T1)
    assert procedure.status == 201 and procedure.version_id == "1" and procedure.method == "PUT"
    assert procedure.identifier == (SCHEME.system("treatment"), "T00000001")
    assert [(r.record, r.state) for r in result.record_results(KEYS)] == [(k, "accepted") for k in KEYS]


def test_a_refused_transaction_is_sent_again_record_by_record_and_only_the_bad_record_fails(
        bundle: dict[str, Any], server: Server, sender: Sender) -> None:
    server.refuse(_bad_treatment(T3))
    result = sender.send(bundle)
    whole, *parts = server.transactions
    assert whole == bundle
    # one part per record that is not only shared: the assessments and treatments (patients and
    # practitioners travel with the records that refer to them)
    assert sorted(str(SCHEME.record_of(p["entry"][-1]["resource"])) for p in parts) == sorted(map(str, [A1, A2, T1, T3]))
    assert all(self_contained(p) for p in parts)
    (refused,) = result.refusals
    assert refused.records == (T3,) and refused.status == 422
    assert refused.issues() == [{"severity": "error", "code": "processing", "diagnostics": "Procedure.status: unknown code",
                                 "expression": ["Procedure.status"]}]
    states = {r.record: r.state for r in result.record_results(KEYS)}
    # P2 and PR1 only travelled in T3's part and in A2's (accepted): A2's part carried them
    assert states == {P1: "accepted", P2: "accepted", PR1: "accepted", PR2: "accepted", A1: "accepted",
                      A2: "accepted", T1: "accepted", T3: "refused"}


def test_a_shared_record_only_in_a_refused_part_is_not_sent_rather_than_failed(
        tmp_path: Path, server: Server, sender: Sender) -> None:
    (bundle,) = bundles_of(tmp_path, example_records(P1, PR2, T1, P2, PR1, T3))
    server.refuse(_bad_treatment(T3))
    result = sender.send(bundle)
    states = {r.record: r.state for r in result.record_results([P1, PR2, T1, P2, PR1, T3])}
    assert states == {P1: "accepted", PR2: "accepted", T1: "accepted", P2: "not_sent", PR1: "not_sent", T3: "refused"}


def test_a_bundle_of_one_record_is_refused_whole_without_splitting(tmp_path: Path, server: Server,
                                                                   sender: Sender) -> None:
    (bundle,) = bundles_of(tmp_path, example_records(T3))
    server.refuse(_bad_treatment(T3))
    result = sender.send(bundle)
    assert len(server.transactions) == 1
    assert [r.records for r in result.refusals] == [(T3,)]
    assert isinstance(result.refusals[0].error, FhirUnprocessableError)


def _ambiguous_patient(reply: Any) -> Any:
    def rule(bundle: dict[str, Any]) -> Reply | None:
        return reply(bundle) if has(bundle, "Patient", P1) else None
    return rule


def _patient_entry(bundle: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return next((n, e) for n, e in enumerate(bundle["entry"])
                if e["resource"]["resourceType"] == "Patient" and SCHEME.record_of(e["resource"]) == P1)


def test_an_ambiguous_match_named_by_hapis_message_fails_the_shared_patient_and_its_records(
        bundle: dict[str, Any], server: Server, sender: Sender) -> None:
    def hapi(part: dict[str, Any]) -> Reply:
        # what HAPI FHIR 8.8 answers, criteria quoted as sent (seen against the real server)
        _, entry = _patient_entry(part)
        return refusal(412, "processing", f"HAPI-0958: Failed to CREATE Patient with match URL "
                                          f"\"{entry['request']['ifNoneExist']}\" because this search matched 2 resources")

    server.refuse(_ambiguous_patient(hapi))
    result = sender.send(bundle)
    refused = {r.records for r in result.refusals}
    assert refused == {(P1, A1), (P1, T1)}
    states = {r.record: r.state for r in result.record_results(KEYS)}
    assert states[P1] == states[A1] == states[T1] == "refused"
    assert states[P2] == states[T3] == "accepted"


def test_the_text_fallback_reads_the_criteria_however_hapi_quotes_them(
        bundle: dict[str, Any], server: Server, sender: Sender) -> None:
    def other_form(part: dict[str, Any]) -> Reply:
        _, entry = _patient_entry(part)
        url = f"Patient?{unquote(entry['request']['ifNoneExist'])}"
        return refusal(412, "processing", f"Invalid match URL \"{url}\" - Multiple resources match this search")

    server.refuse(_ambiguous_patient(other_form))
    assert {r.records for r in sender.send(bundle).refusals} == {(P1, A1), (P1, T1)}


def test_an_ambiguous_match_is_told_by_status_and_issue_codes_not_by_words(
        bundle: dict[str, Any], server: Server, sender: Sender) -> None:
    def coded(part: dict[str, Any]) -> Reply:
        n, _ = _patient_entry(part)
        return refusal(412, "multiple-matches", "zwei Treffer", [f"Bundle.entry[{n}].request"])

    server.refuse(_ambiguous_patient(coded))
    result = sender.send(bundle)
    assert {r.records for r in result.refusals} == {(P1, A1), (P1, T1)}
    assert all(is_ambiguous_match(r.error, r.part) for r in result.refusals)


def test_an_ambiguous_match_that_names_no_entry_fails_only_the_records_of_the_part(
        bundle: dict[str, Any], server: Server, sender: Sender) -> None:
    server.refuse(_ambiguous_patient(lambda part: refusal(412, "processing", "precondition failed")))
    result = sender.send(bundle)
    # the part has two shared candidates (the patient and the practitioner) and nothing says which
    assert {r.records for r in result.refusals} == {(A1,), (T1,)}


def test_a_412_to_an_if_match_update_is_a_version_conflict_not_an_ambiguous_match(bundle: dict[str, Any]) -> None:
    part = {"resourceType": "Bundle", "type": "transaction",
            "entry": [{**bundle["entry"][3], "request": {**bundle["entry"][3]["request"], "ifMatch": 'W/"2"'}}]}
    error = FhirUnprocessableError("stale", status=412)
    assert not is_ambiguous_match(error, part)
    assert is_ambiguous_match(error, {"entry": bundle["entry"][3:4]})


def test_hapis_two_known_messages_are_the_only_text_fallback() -> None:
    first = 'Failed to CREATE resource with match URL "Patient?identifier=s|1" because this search matched 2 resources'
    second = 'Invalid match URL "Patient?identifier=s|1" - Multiple resources match this search'
    assert [m.group(1) or m.group(2) for t in (first, second) for m in HAPI_AMBIGUOUS_MATCH.finditer(t)] == [
        "Patient?identifier=s|1"] * 2
    assert HAPI_AMBIGUOUS_MATCH.search("Patient?identifier=s|1 is ambiguous") is None


def test_errors_of_the_target_are_raised_not_turned_into_refusals(
        bundle: dict[str, Any], server: Server, sender: Sender) -> None:
    server.refuse(lambda part: refusal(401, "login", "token expired"))
    with pytest.raises(FhirAuthError):
        sender.send(bundle)
    server.rules[:] = [lambda part: refusal(503, "transient", "down for maintenance")]
    with pytest.raises(FhirServerSideError) as caught:
        sender.send(bundle)
    assert status_of(caught.value) == 503


def test_a_foreign_identifier_ending_in_patient_is_not_taken_for_a_record_of_ours(bundle: dict[str, Any]) -> None:
    foreign = {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
               "resource": {"resourceType": "Patient", "id": "x",
                            "identifier": [{"system": "https://hospital.example.org/patient", "value": "P000001"}]},
               "request": {"method": "POST", "url": "Patient"}}
    parts = dict(record_parts({**bundle, "entry": [*bundle["entry"], foreign]}, SCHEME))
    assert ("resource", foreign["fullUrl"]) in parts and P1 not in parts


def test_the_identity_map_sees_every_entry_that_went_through(bundle: dict[str, Any], server: Server,
                                                             session: requests.Session, clock: FakeClock) -> None:
    seen: list[EntryResult] = []

    class Identities:
        def remember(self, result: EntryResult) -> None:
            seen.append(result)

    server.refuse(_bad_treatment(T3))
    result = Sender(client_on(session, clock), scheme=SCHEME, identities=Identities()).send(bundle)
    assert seen == result.entries and not any(e.record == T3 for e in seen)


def test_an_error_without_an_operation_outcome_still_gets_one() -> None:
    error = FhirUnprocessableError("refused", status=422)
    assert operation_outcome(error) == {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "processing", "diagnostics": "refused (HTTP 422)"}]}
