"""Client configuration: base URL normalisation, TLS options, construction from plain values."""

from __future__ import annotations

from pathlib import Path

import pytest

from ims_fhir.client import BearerTokenAuth, ClientConfig, RetryPolicy, Timeout, normalize_base_url
from ims_fhir.errors import UsageError


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("https://fhir.example.org/r4", "https://fhir.example.org/r4"),
        ("  HTTPS://FHIR.Example.org/R4/ ", "https://fhir.example.org/R4"),
        ("http://127.0.0.1:8080/fhir///", "http://127.0.0.1:8080/fhir"),
        ("https://fhir.example.org", "https://fhir.example.org"),
    ],
)
def test_base_url_is_normalised(raw: str, normal: str) -> None:
    assert normalize_base_url(raw) == normal
    assert ClientConfig(raw).base_url == normal


@pytest.mark.parametrize(
    "bad",
    [
        "fhir.example.org/r4",
        "ftp://x/fhir",
        "https:///fhir",
        "https://x/fhir?x=1",
        "https://x/fhir#top",
        "http://x:port/fhir",
    ],
)
def test_bad_base_urls_are_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        normalize_base_url(bad)


def test_credentials_in_the_url_are_refused_without_echo() -> None:
    with pytest.raises(UsageError) as info:
        normalize_base_url("https://alice:hunter2@x/fhir")
    assert "hunter2" not in str(info.value)


def test_from_values(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    config = ClientConfig.from_values(
        "https://x/fhir/",
        auth="bearer:env:T",
        connect_timeout=3,
        read_timeout=30,
        max_attempts=2,
        total_budget=10,
        ca_bundle=str(bundle),
        environ={"T": "tok"},
    )
    assert config.base_url == "https://x/fhir"
    assert isinstance(config.auth, BearerTokenAuth)
    assert config.timeout == Timeout(3, 30)
    assert (config.retry.max_attempts, config.retry.total_budget, config.retry.retry_transactions) == (2, 10, True)
    assert config.requests_verify == str(bundle)
    assert config.user_agent.startswith("ims-fhir/")


def test_tls_verification_is_on_by_default() -> None:
    assert ClientConfig("https://x/fhir").requests_verify is True


def test_ca_bundle_must_exist_and_needs_verification(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        ClientConfig("https://x/fhir", ca_bundle=str(tmp_path / "missing.pem"))
    (tmp_path / "ca.pem").write_text("x")
    with pytest.raises(UsageError):
        ClientConfig("https://x/fhir", ca_bundle=str(tmp_path / "ca.pem"), verify=False)


def test_timeouts_must_be_positive() -> None:
    with pytest.raises(UsageError):
        Timeout(0, 10)


def test_config_is_frozen() -> None:
    config = ClientConfig("https://x/fhir", retry=RetryPolicy.no_retries())
    with pytest.raises(AttributeError):
        config.base_url = "https://y"  # type: ignore[misc]
