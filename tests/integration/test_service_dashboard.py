"""The dashboard in real headless Chromium (Debian's ``chromium``, driven by Playwright).

The app is served by waitress in a thread with the sync worker beside it, in front of
HAPI through :class:`~tests.integration.test_service.RejectingProxy`: one treatment is
refused by HAPI's validator (422). A person logs in with an API token, sees the failure
with HAPI's message, the server-side rule is "fixed" (the proxy stops corrupting it),
presses Retry and sees the record synced. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import waitress
from flask import Flask

from ims_fhir.dev.hapi import DevServer
from ims_fhir.sync import SyncWorker
from tests.service.conftest import RO_TOKEN, RW_TOKEN, rw
from tests.service.support import artifacts, captured_logs, leaks, personal_data

from .test_service import MARKER, RejectingProxy, example_lines, make_app, ndjson

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium", pytrace=False)
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Served:
    """The app under waitress and the sync worker, each in a thread of this process."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"  # type: ignore[union-attr]
        st = app.extensions["ims_fhir"]
        self.worker = SyncWorker(st.outbox, list(st.config.targets), st.organization, st.config.worker)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.server.run, daemon=True),
                        threading.Thread(target=self.worker.run, args=(self.stop,), daemon=True)]

    def __enter__(self) -> Served:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.close()
        for t in self.threads:
            t.join(timeout=30)


def _wait(predicate: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_log_in_see_the_failure_retry_and_see_it_synced(browser: Any, clean_fhir_server: DevServer,
                                                         tmp_path: Path) -> None:
    lines = example_lines()
    bad = next(r for r in lines if r["record_type"] == "treatment" and r.get("status", "completed") == "completed")
    bad["notes"] = f"{MARKER}: the proxy corrupts this Procedure on its way to HAPI"
    shots = artifacts()
    with captured_logs("test_service_dashboard") as log, RejectingProxy(clean_fhir_server.base_url, lifetime=300) as proxy:
        app = make_app(tmp_path, proxy.base_url)
        outbox = app.extensions["ims_fhir"].outbox
        with Served(app) as served:
            assert app.test_client().post("/records", data=ndjson(lines), headers=rw()).status_code == 202
            _wait(lambda: outbox.pending() == 0, "the first sync")
            (delivery,) = outbox.status("treatment", bad["id"]).deliveries
            assert delivery.state == "failed"

            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(served.url + "/")
            assert "/login" in page.url  # the dashboard is behind the login
            page.fill("#token", "not-a-token")
            page.click("button[type=submit]")
            assert page.locator(".error").inner_text() == "That token is not valid."
            page.fill("#token", RW_TOKEN)
            page.click("button[type=submit]")
            page.wait_for_selector("table.counts")
            row = page.locator(f'tr.failure[data-record="treatment/{bad["id"]}"]')
            assert row.count() == 1
            assert "finished-ish" in row.inner_text() and "HTTP 422" in row.inner_text()
            assert page.locator('td[data-state="failed"]').inner_text() == "1"
            assert page.locator('td[data-state="synced"]').inner_text() == str(len(lines) - 1)
            page.screenshot(path=str(shots / "dashboard-failure.png"), full_page=True)

            proxy.rewrite = False  # the server-side problem is fixed; the same record now goes through
            row.locator("button.retry").click()
            page.wait_for_selector(f'tr.failure[data-record="treatment/{bad["id"]}"]', state="detached", timeout=60_000)
            page.wait_for_function("document.querySelector('td[data-state=\"synced\"]').textContent.trim() === "
                                   f"'{len(lines)}'", timeout=60_000)
            assert page.locator(".empty").first.inner_text() == "No failed or dead records."
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

            page.click(f'table.activity a:has-text("treatment {bad["id"]}")')
            page.wait_for_selector("table.deliveries")
            assert page.locator('.delivery [data-state]').inner_text() == "synced"
            history = page.locator("table.activity").inner_text()
            assert "failed" in history and "retry requested" in history and "synced" in history
            page.screenshot(path=str(shots / "dashboard-record.png"), full_page=True)

            # a read-only token can look, not retry
            reader = browser.new_page()
            reader.goto(served.url + "/login")
            reader.fill("#token", RO_TOKEN)
            reader.click("button[type=submit]")
            reader.wait_for_selector("table.counts")
            csrf = reader.locator("input[name=csrf]").first.get_attribute("value")
            answer = reader.request.post(served.url + "/ui/retry-dead", form={"csrf": csrf or ""})
            assert answer.status == 403
    assert (shots / "dashboard.png").stat().st_size > 10_000
    text = log.read_text(encoding="utf-8")
    assert leaks(text, personal_data(lines)) == [] and RW_TOKEN not in text and RO_TOKEN not in text
