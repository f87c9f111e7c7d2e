"""Transaction chunking and search page helpers."""

from __future__ import annotations

from typing import Any

import pytest

from ims_fhir.client import SearchPage, chunk_entries, next_link, transaction_bundle, transaction_bundles
from ims_fhir.errors import UsageError


def entry(i: int, **resource: Any) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:00000000-0000-0000-0000-{i:012d}",
        "resource": {"resourceType": "Observation", **resource},
        "request": {"method": "PUT", "url": f"Observation/o{i}"},
    }


def test_chunks_keep_order_and_size() -> None:
    entries = [entry(i) for i in range(7)]
    chunks = list(chunk_entries(entries, 3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [e for c in chunks for e in c] == entries


def test_bundles_per_chunk() -> None:
    bundles = list(transaction_bundles([entry(i) for i in range(4)], 2))
    assert [b["type"] for b in bundles] == ["transaction", "transaction"]
    assert all(len(b["entry"]) == 2 for b in bundles)
    assert transaction_bundle([], bundle_type="batch")["type"] == "batch"


def test_references_inside_a_chunk_are_fine() -> None:
    entries = [entry(0), entry(1, subject={"reference": "urn:uuid:00000000-0000-0000-0000-000000000000"})]
    assert len(list(chunk_entries(entries, 2))) == 1


def test_a_urn_reference_across_chunks_is_refused() -> None:
    entries = [entry(0), entry(1, focus=[{"reference": "urn:uuid:00000000-0000-0000-0000-000000000000"}])]
    with pytest.raises(UsageError, match="entry 1 refers to urn:uuid"):
        list(chunk_entries(entries, 1))


def test_conditional_references_may_cross_chunks() -> None:
    entries = [entry(0), entry(1, subject={"reference": "Patient?identifier=s|1"})]
    assert len(list(chunk_entries(entries, 1))) == 2


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(UsageError):
        list(chunk_entries([entry(0)], 0))


def test_search_page_modes() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": "https://x/fhir?p=2"}],
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "a"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Patient", "id": "b"}},
            {"resource": {"resourceType": "Organization", "id": "o"}, "search": {"mode": "include"}},
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
        ],
    }
    page = SearchPage(bundle)
    assert [r["id"] for r in page.matches] == ["a", "b"]
    assert [r["id"] for r in page.included] == ["o"]
    assert len(page.outcomes) == 1
    assert page.total is None
    assert page.next_url == next_link(bundle) == "https://x/fhir?p=2"
