"""The FHIR R4 REST client: the interactions ims-fhir uses, over :class:`Transport`.

Terms
-----
interaction
    A FHIR RESTful interaction (http spec 3.1.0): read, vread, create, update,
    conditional create/update, search-type, history-instance, transaction. Each method
    of :class:`FhirClient` is one interaction and returns a
    :class:`~ims_fhir.client.response.FhirResponse` (or, for search and history, an
    iterator that follows ``next`` links page by page).
query
    Search parameters as a mapping (``{"identifier": "sys|val", "_count": 50}``; a list
    value repeats the parameter), a sequence of pairs, or an already encoded string
    (``"identifier=sys%7Cval"``). Used for search, ``If-None-Exist`` and conditional update.
capability check
    Before an interaction the client checks, once per client, that the server is FHIR
    R4 and declares that interaction (turn off with ``ClientConfig.check_capabilities``).
    :meth:`FhirClient.require` checks a whole list up front (the push command's check).
idempotent call
    Reads, updates and conditional creates are retried after timeouts and 5xx; a plain
    create is not (it could create twice); a transaction is retried when
    ``RetryPolicy.retry_transactions`` (or the call's ``idempotent=``) says its entries
    are conditional creates / PUTs on deterministic ids.
same-origin paging
    ``next`` links are followed only when they stay under the configured base URL:
    credentials are never sent to a host the user did not name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote, urlencode, urlsplit

import orjson
import requests

from ims_fhir.client.bundles import Entry, SearchPage
from ims_fhir.client.capability import Requirement, ServerCapabilities, on_type, system
from ims_fhir.client.config import ClientConfig
from ims_fhir.client.errors import shown_url, summarize_body
from ims_fhir.client.response import FhirResponse, Resource
from ims_fhir.client.retry import Clock
from ims_fhir.client.throttle import Throttle
from ims_fhir.client.transport import FHIR_JSON, Transport
from ims_fhir.errors import (
    FhirAmbiguousMatchError,
    FhirAuthError,
    FhirClientSideError,
    FhirConflictError,
    FhirError,
    FhirServerSideError,
    FhirVersionConflictError,
    UsageError,
)

#: A parameter value: str, int (or anything printable), or a list/tuple of them to repeat the parameter.
QueryValue = Any
Query = Mapping[str, QueryValue] | Sequence[tuple[str, QueryValue]] | str
Prefer = Literal["minimal", "representation", "OperationOutcome"]

_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def encode_query(query: Query) -> str:
    """A query (see the module docstring) as a URL query string without the leading ``?``."""
    if isinstance(query, str):
        return query.lstrip("?")
    pairs: list[tuple[str, str]] = []
    items = query.items() if isinstance(query, Mapping) else query
    for key, value in items:
        if not key:
            raise UsageError("a search parameter name is empty")
        values = value if isinstance(value, (list, tuple)) else [value]
        pairs.extend((key, str(v)) for v in values)
    return urlencode(pairs, quote_via=quote)


def _check_type(resource_type: str) -> str:
    if not isinstance(resource_type, str) or not _TYPE.fullmatch(resource_type):
        raise UsageError(f"{resource_type!r} is not a FHIR resource type name")
    return resource_type


def _check_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise UsageError(f"{value!r} is not a valid FHIR {what} (1-64 of A-Z a-z 0-9 - .)")
    return value


def _has_if_match(bundle: Resource) -> bool:
    """Whether any entry of a transaction is a version-aware write (``request.ifMatch``)."""
    return any(
        isinstance(e, dict) and isinstance(e.get("request"), dict) and e["request"].get("ifMatch")
        for e in bundle.get("entry") or ()
    )


#: how HAPI words a conditional match that found several resources (HAPI-0958, HAPI-2207)
_SEVERAL_MATCHES = re.compile(r"matched \d+ resources|multiple (resources|matches)|HAPI-0958|HAPI-2207", re.IGNORECASE)


def _names_several_matches(exc: FhirConflictError) -> bool:
    return bool(_SEVERAL_MATCHES.search(str(exc)))


def _if_match(version: str) -> str:
    """``3`` or ``W/"3"`` -> ``W/"3"`` (the weak ETag form the FHIR http spec uses)."""
    text = version.strip()
    if text.startswith('W/"') and text.endswith('"'):
        return text
    return f'W/"{_check_id(text.strip(chr(34)), "version id")}"'


def _bundle_needs(bundle: Resource) -> list[Requirement]:
    """What sending ``bundle`` as a transaction needs: the interaction and each entry's conditional one."""
    needs = {system("transaction")}
    for entry in bundle.get("entry") or ():
        request = entry.get("request") or {}
        resource_type = str(request.get("url", "")).split("?")[0].split("/")[0]
        if not _TYPE.fullmatch(resource_type):
            continue
        if request.get("method") == "POST" and request.get("ifNoneExist"):
            needs.add(on_type(resource_type, "create", conditional=True))
        elif request.get("method") == "PUT" and "?" in str(request.get("url", "")):
            needs.add(on_type(resource_type, "update", conditional=True))
    return sorted(needs, key=lambda n: (n.resource_type or "", n.interaction))


class FhirClient:
    """A FHIR R4 REST client for one server (see the module docstring).

    ``session`` may be injected (tests mount adapters on it; the caller closes it);
    otherwise one is built and closed by :meth:`close` / the ``with`` block. ``clock``
    replaces sleep, clocks and randomness of the retry policy (tests).
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        session: requests.Session | None = None,
        clock: Clock | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        self.config = config
        self.transport = Transport(config, session=session, clock=clock, throttle=throttle)
        self._capabilities: ServerCapabilities | None = None
        self._batch: bool | None = None  # whether the server takes batch Bundles (supports_batch)

    def __repr__(self) -> str:
        return f"FhirClient(base_url={self.config.base_url!r}, auth={self.config.auth!r})"

    @property
    def base_url(self) -> str:
        return self.config.base_url

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- capabilities ---------------------------------------------------------------

    def capabilities(self) -> ServerCapabilities:
        """The server's CapabilityStatement (fetched on first use, then kept); refuses non-R4."""
        if self._capabilities is None:
            response = self._send("GET", f"{self.base_url}/metadata", idempotent=True)
            self._capabilities = ServerCapabilities.from_statement(response.resource, base_url=self.base_url)
        self._capabilities.require_r4()
        return self._capabilities

    def require(self, needs: Iterable[Requirement]) -> ServerCapabilities:
        """Check up front that the server is R4 and supports every requirement (one error lists all gaps).

        The requirements are first announced to the auth (:meth:`Auth.declare_needs`), so
        that a scheme which asks for scopes asks for exactly these.
        """
        needs = list(needs)
        self.config.auth.declare_needs(needs)
        capabilities = self.capabilities()
        capabilities.require(needs)
        return capabilities

    def _need(self, *needs: Requirement) -> None:
        if self.config.check_capabilities:
            self.require(needs)

    # -- instance interactions --------------------------------------------------------

    def read(self, resource_type: str, resource_id: str) -> FhirResponse:
        """``GET [base]/[type]/[id]``."""
        self._need(on_type(_check_type(resource_type), "read"))
        return self._send("GET", self._url(resource_type, _check_id(resource_id)), idempotent=True)

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> FhirResponse:
        """``GET [base]/[type]/[id]/_history/[vid]``."""
        self._need(on_type(_check_type(resource_type), "vread"))
        url = self._url(resource_type, _check_id(resource_id), "_history", _check_id(version_id, "version id"))
        return self._send("GET", url, idempotent=True)

    def create(
        self, resource: Resource, *, if_none_exist: Query | None = None, prefer: Prefer | None = None
    ) -> FhirResponse:
        """``POST [base]/[type]``; with ``if_none_exist`` a conditional create (200 = already there).

        A conditional create is idempotent and retried; a plain create is not. A
        conditional create that matches several resources raises FhirAmbiguousMatchError.
        """
        resource_type = self._resource_type(resource)
        conditional = if_none_exist is not None
        self._need(on_type(resource_type, "create", conditional=conditional))
        headers = self._prefer(prefer)
        if if_none_exist is not None:  # i.e. conditional
            headers["If-None-Exist"] = encode_query(if_none_exist)
        try:
            return self._send(
                "POST", self._url(resource_type), idempotent=conditional, resource=resource, headers=headers
            )
        except FhirConflictError as exc:
            if conditional and exc.status == 412:
                raise FhirAmbiguousMatchError(f"conditional create of {resource_type}: {exc}") from exc
            raise

    def update(self, resource: Resource, *, if_match: str | None = None, prefer: Prefer | None = None) -> FhirResponse:
        """``PUT [base]/[type]/[id]`` (creates the resource if the server allows client ids).

        ``if_match`` is the version id the caller last saw (``"3"`` or ``'W/"3"'``); a
        stale one raises FhirVersionConflictError (412 per the spec, 409 from HAPI). The new version id is ``.version_id``.
        """
        resource_type = self._resource_type(resource)
        resource_id = resource.get("id")
        if not isinstance(resource_id, str):
            raise UsageError(f"update needs a {resource_type} with an id")
        self._need(on_type(resource_type, "update"))
        headers = self._prefer(prefer)
        if if_match is not None:
            headers["If-Match"] = _if_match(if_match)
        url = self._url(resource_type, _check_id(resource_id))
        return self._send("PUT", url, idempotent=True, resource=resource, headers=headers)

    def conditional_update(
        self, resource_type: str, query: Query, resource: Resource, *, prefer: Prefer | None = None
    ) -> FhirResponse:
        """``PUT [base]/[type]?query``: update the one match, or create when none matches.

        Several matches raise FhirAmbiguousMatchError (the server answers 412).
        """
        if self._resource_type(resource) != _check_type(resource_type):
            raise UsageError(f"conditional update of {resource_type} got a {resource.get('resourceType')}")
        self._need(on_type(resource_type, "update", conditional=True))
        url = f"{self._url(resource_type)}?{encode_query(query)}"
        try:
            return self._send("PUT", url, idempotent=True, resource=resource, headers=self._prefer(prefer))
        except FhirConflictError as exc:
            if exc.status == 412:
                raise FhirAmbiguousMatchError(f"conditional update of {resource_type}: {exc}") from exc
            raise

    # -- search and history -----------------------------------------------------------

    def search(self, resource_type: str, params: Query | None = None, *, no_cache: bool = False) -> Iterator[Resource]:
        """The matching resources of ``GET [base]/[type]?params``, across all pages.

        Use :meth:`search_pages` for whole Bundles, totals and ``_include``d resources.
        ``no_cache`` asks the server not to reuse a cached result (``Cache-Control: no-cache``).
        """
        for page in self.search_pages(resource_type, params, no_cache=no_cache):
            yield from page.matches

    def search_pages(
        self, resource_type: str, params: Query | None = None, *, no_cache: bool = False
    ) -> Iterator[SearchPage]:
        """Each page (searchset Bundle) of a search, following ``next`` links."""
        self._need(on_type(_check_type(resource_type), "search-type"))
        url = self._url(resource_type)
        query = encode_query(params) if params is not None else ""
        headers = {"Cache-Control": "no-cache"} if no_cache else {}
        yield from self._pages(f"{url}?{query}" if query else url, headers=headers)

    def history(self, resource_type: str, resource_id: str) -> Iterator[Entry]:
        """The entries of ``GET [base]/[type]/[id]/_history``, newest first, across pages.

        Entries, not resources: a deleted version has ``request.method == "DELETE"`` and no resource.
        """
        self._need(on_type(_check_type(resource_type), "history-instance"))
        url = self._url(resource_type, _check_id(resource_id), "_history")
        for page in self._pages(url, headers={}):
            yield from (e for e in page.bundle.get("entry") or () if isinstance(e, dict))

    def _pages(self, first_url: str, *, headers: Mapping[str, str]) -> Iterator[SearchPage]:
        seen: set[str] = set()
        url: str | None = first_url
        while url is not None:
            seen.add(url)
            response = self._send("GET", url, idempotent=True, headers=headers)
            bundle = response.resource
            if not bundle or bundle.get("resourceType") != "Bundle":
                raise FhirError(f"GET {shown_url(url)} did not return a Bundle")
            page = SearchPage(bundle)
            yield page
            url = page.next_url
            if url is not None:
                self._check_next(url, seen)

    def _check_next(self, url: str, seen: set[str]) -> None:
        base = urlsplit(self.base_url)
        link = urlsplit(url)
        same_origin = (link.scheme.lower(), link.netloc.lower()) == (base.scheme, base.netloc)
        if not same_origin or not (link.path == base.path or link.path.startswith(base.path + "/")):
            raise FhirError(
                f"the server's next link {shown_url(url)} leaves the base URL {self.base_url}; "
                "not following it (credentials stay with the configured server)"
            )
        if url in seen:
            raise FhirError(f"the server's next link {shown_url(url)} repeats an earlier page; stopping")

    # -- transaction ------------------------------------------------------------------

    def transaction(
        self, bundle: Resource, *, idempotent: bool | None = None, prefer: Prefer | None = None
    ) -> FhirResponse:
        """``POST [base]`` a transaction Bundle; ``.resource`` is the transaction-response
        Bundle and ``.entries()`` its per-entry status, location and version.

        ``idempotent`` (default ``RetryPolicy.retry_transactions``) states whether the
        transaction may be sent again after a timeout or 5xx.
        """
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            raise UsageError("transaction() needs a Bundle of type 'transaction'")
        self._need(system("transaction"))
        retry = self.config.retry.retry_transactions if idempotent is None else idempotent
        try:
            response = self._send("POST", self.base_url, idempotent=retry, resource=bundle,
                                  headers=self._prefer(prefer))
        except FhirConflictError as exc:
            if exc.status == 412 and _has_if_match(bundle) and not _names_several_matches(exc):
                message = f"POST {shown_url(self.base_url)} (transaction) failed"
                raise FhirVersionConflictError(message, status=exc.status, issues=exc.issues, outcome=exc.outcome,
                                               url=exc.url) from exc
            raise
        result = response.resource
        if not result or result.get("resourceType") != "Bundle" or result.get("type") != "transaction-response":
            raise FhirError(f"POST {self.base_url} (transaction) did not return a transaction-response Bundle")
        return response

    def batch(self, bundle: Resource, *, idempotent: bool) -> FhirResponse:
        """``POST [base]`` a batch Bundle; ``.resource`` is the batch-response Bundle (one
        entry per entry, each with its own status: a refused entry does not raise).

        ``idempotent``: whether the batch may be sent again after a timeout or 5xx (every
        write in it conditional or by id)."""
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "batch":
            raise UsageError("batch() needs a Bundle of type 'batch'")
        if self.config.check_capabilities and not self.supports_batch():
            self._need(system("batch"))  # raises: not declared, and the server refused the probe
        response = self._send("POST", self.base_url, idempotent=idempotent, resource=bundle)
        result = response.resource
        if not result or result.get("resourceType") != "Bundle" or result.get("type") != "batch-response":
            raise FhirError(f"POST {self.base_url} (batch) did not return a batch-response Bundle")
        return response

    def supports_batch(self) -> bool:
        """Whether the server takes batch Bundles: declared in its CapabilityStatement, or else
        found by asking once (per client) with a batch of one search, which writes nothing
        (HAPI FHIR, for one, serves batches without declaring the interaction, and refuses an
        empty one)."""
        if "batch" in self.capabilities().system_interactions:
            return True
        if self._batch is None:
            probe = {"resourceType": "Bundle", "type": "batch",
                     "entry": [{"request": {"method": "GET", "url": "Organization?_count=1"}}]}
            try:
                answer = self._send("POST", self.base_url, idempotent=True, resource=probe).resource
            except FhirAuthError:
                raise
            except (FhirClientSideError, FhirServerSideError):
                self._batch = False
            else:
                self._batch = bool(answer) and answer.get("type") == "batch-response"  # type: ignore[union-attr]
        return self._batch

    def delivery_mode(self, bundle: Resource) -> Literal["transaction", "batch", "entries"]:
        """How :meth:`send_bundle` applies ``bundle``: as one ``transaction`` when the server
        declares it and the conditional creates/updates its entries use; otherwise, when the
        server offers ``batch``, through a few batch Bundles in dependency levels; else entry by
        entry in dependency order (``entries``)."""
        if not self.config.check_capabilities:
            return "transaction"
        capabilities = self.capabilities()
        # A type the statement does not list is left to the server's transaction to judge.
        needs = [n for n in _bundle_needs(bundle) if n.resource_type is None or n.resource_type in capabilities.types]
        if capabilities.supports_all(needs):
            return "transaction"
        return "batch" if self.supports_batch() else "entries"

    def send_bundle(self, bundle: Resource) -> FhirResponse:
        """Apply a transaction Bundle as :meth:`delivery_mode` says (batches:
        :func:`~ims_fhir.client.batchwise.send_batchwise`; entry by entry:
        :func:`~ims_fhir.client.entrywise.send_entrywise`).

        Either way the answer is a ``transaction-response`` Bundle with one entry per entry.
        """
        mode = self.delivery_mode(bundle)
        if mode == "transaction":
            return self.transaction(bundle)
        if mode == "batch":
            from ims_fhir.client.batchwise import send_batchwise

            return send_batchwise(self, bundle)
        from ims_fhir.client.entrywise import send_entrywise

        return send_entrywise(self, bundle)

    # -- plumbing ---------------------------------------------------------------------

    def _url(self, *segments: str) -> str:
        return "/".join([self.base_url, *(quote(s, safe="") for s in segments)])

    @staticmethod
    def _resource_type(resource: Resource) -> str:
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise UsageError("a FHIR resource needs a resourceType")
        return _check_type(resource["resourceType"])

    @staticmethod
    def _prefer(prefer: Prefer | None) -> dict[str, str]:
        if prefer is None:
            return {}
        if prefer not in ("minimal", "representation", "OperationOutcome"):
            raise UsageError(f"Prefer return must be minimal, representation or OperationOutcome, not {prefer!r}")
        return {"Prefer": f"return={prefer}"}

    def _send(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        resource: Resource | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> FhirResponse:
        send_headers = {"Accept": FHIR_JSON, **(headers or {})}
        body = None
        if resource is not None:
            body = orjson.dumps(resource)
            send_headers["Content-Type"] = FHIR_JSON
        response = self.transport.request(method, url, idempotent=idempotent, body=body, headers=send_headers)
        return FhirResponse.build(
            status=response.status_code,
            resource=self._body(response, method),
            headers=response.headers,
            url=response.url,
        )

    @staticmethod
    def _body(response: requests.Response, method: str) -> Resource | None:
        if not response.content or not response.content.strip():
            return None
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            summary = summarize_body(response.content, response.headers.get("Content-Type")) or ""
            raise FhirError(
                f"{method} {shown_url(response.url)} answered HTTP {response.status_code} with a body "
                f"that is not JSON: {summary}"
            ) from exc
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise FhirError(f"{method} {shown_url(response.url)} answered JSON that is not a FHIR resource")
        return body


__all__ = ["FhirClient", "Prefer", "Query", "QueryValue", "encode_query"]
