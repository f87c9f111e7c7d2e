"""HTTP transport of the FHIR client: one ``requests.Session``, auth, retries, error translation.

Terms
-----
session
    The ``requests.Session`` every request goes through, injected by the caller or
    built here (and then closed by :meth:`Transport.close`). Tests mount a
    ``requests.adapters.BaseAdapter`` on it to shape server replies; the session
    itself is never modified (headers, TLS settings and timeouts are passed per request).
call
    One :meth:`Transport.request`: up to ``RetryPolicy.max_attempts`` attempts within
    ``RetryPolicy.total_budget`` (see :mod:`ims_fhir.client.retry`), plus at most one
    extra attempt after a 401 when the auth could refresh its credentials.
throttle
    A :class:`~ims_fhir.client.throttle.Throttle` shared by the workers of one target:
    a 429 (or a ``Retry-After``) seen by one pauses them all.
idempotent
    Passed explicitly by the caller on every call; decides whether a timeout, a reset
    connection or a 5xx may be answered by sending the request again.

This is the one place where ``requests`` exceptions become
:class:`~ims_fhir.errors.FhirTransportError` and error statuses become the typed
:class:`~ims_fhir.errors.FhirServerError` subclasses. Header values are never logged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import requests

from ims_fhir.client.auth import AuthContext
from ims_fhir.client.config import ClientConfig
from ims_fhir.client.errors import classify_exception, error_for_response, shown_url, transport_error
from ims_fhir.client.retry import Clock, parse_retry_after
from ims_fhir.client.throttle import Throttle

_log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


class Transport:
    """Sends HTTP requests for the FHIR client (see the module docstring)."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        session: requests.Session | None = None,
        clock: Clock | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or Clock()
        #: Shared with the other workers of the same target (see :mod:`ims_fhir.client.throttle`).
        self.throttle = throttle or Throttle()
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        self.auth_context = AuthContext(
            post_form=self._post_form, clock=self.clock, get=self._get, base_url=config.base_url
        )

    def __repr__(self) -> str:
        return f"Transport(base_url={self.config.base_url!r}, auth={self.config.auth!r})"

    def close(self) -> None:
        """Close the session if this transport built it (an injected one belongs to the caller)."""
        if self._owns_session:
            self.session.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        params: Any = None,
        body: bytes | None = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        authenticate: bool = True,
        check: bool = True,
    ) -> requests.Response:
        """Send one call with retries; return the final response.

        With ``check`` (the default) a final status of 300 or more raises the typed
        error; without it the response is returned whatever its status (the OAuth2
        token request reads the error body itself). Transport failures that outlive the
        retry policy raise FhirTransportError.
        """
        policy = self.config.retry
        start = self.clock.monotonic()
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            if authenticate:
                self.throttle.wait(self.clock)  # the server asked the whole target to pause
            send_headers = {"User-Agent": self.config.user_agent, **(headers or {})}
            if authenticate:
                send_headers.update(self.config.auth.headers(self.auth_context))
            try:
                with self.throttle.slot() if authenticate else contextlib.nullcontext():
                    response = self.session.request(
                        method,
                        url,
                        params=params,
                        data=body if body is not None else form,
                        headers=send_headers,
                        timeout=self.config.timeout.as_requests(),
                        verify=self.config.requests_verify,
                        cert=self.config.requests_cert,
                        # A redirected POST/PUT would be replayed as GET by requests; refuse instead.
                        allow_redirects=method in ("GET", "HEAD"),
                    )
            except requests.RequestException as exc:
                failure = classify_exception(exc)
                if failure.retryable and (idempotent or failure.unsent):
                    wait = policy.backoff(attempt, rng=self.clock.random)
                    if self._wait(attempt, wait, start, method=method, url=url, why=failure.summary):
                        continue
                elapsed = self.clock.monotonic() - start
                raise transport_error(failure, method=method, url=url, attempts=attempt, elapsed=elapsed) from exc

            status = response.status_code
            if status == 401 and authenticate and not refreshed and self.config.auth.on_unauthorized():
                # Credentials may have expired early or been revoked: fetch new ones, try once more.
                refreshed = True
                continue
            # 429 means "not processed, too many requests": safe to resend even a plain create.
            if status in policy.retry_statuses and (idempotent or status == 429):
                retry_after = parse_retry_after(response.headers.get("Retry-After"), now=self.clock.now())
                wait = retry_after if retry_after is not None else policy.backoff(attempt, rng=self.clock.random)
                # A pause the server asked for holds every worker of this target, not just this one.
                share = status == 429 or retry_after is not None
                if self._wait(attempt, wait, start, method=method, url=url, why=f"HTTP {status}", share=share):
                    continue
            if check and status >= 300:
                raise error_for_response(response, method=method, attempts=attempt)
            return response

    def _wait(
        self, attempt: int, wait: float, start: float, *, method: str, url: str, why: str, share: bool = False
    ) -> bool:
        """Sleep before another attempt if the policy allows one; False means give up."""
        policy = self.config.retry
        if attempt >= policy.max_attempts:
            return False
        remaining = policy.total_budget - (self.clock.monotonic() - start)
        if remaining <= 0:
            return False
        wait = max(0.0, min(wait, remaining))
        if share:
            self.throttle.hold(wait, self.clock)
        _log.debug(
            "%s %s: %s; retrying in %.2f s (attempt %d of %d)",
            method,
            shown_url(url),
            why,
            wait,
            attempt + 1,
            policy.max_attempts,
        )
        self.clock.sleep(wait)
        return True

    def _post_form(self, url: str, form: Mapping[str, str], headers: Mapping[str, str]) -> requests.Response:
        # Token requests: a client-credentials grant may be repeated safely (it only issues a token).
        return self.request("POST", url, idempotent=True, form=form, headers=headers, authenticate=False, check=False)

    def _get(self, url: str, headers: Mapping[str, str]) -> requests.Response:
        # Discovery documents (.well-known/smart-configuration) are public: no credentials.
        return self.request("GET", url, idempotent=True, headers=headers, authenticate=False, check=False)


__all__ = ["FHIR_JSON", "Transport"]
