"""The cluster monitor page in a real headless browser (Debian's chromium + chromedriver,
driven by Selenium) against a `colony up` cluster: log in, see every instance, Make
Not-Ready on a mail store until it is drained, Ready again -- all without a reload.
A domain administrator's token is refused.  The screenshots are kept under
``$COLONY_TEST_ARTIFACTS`` (default ``test-artifacts/``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from test_colony_up import all_ready, free_base_port, start_up, status_json, stop_up, wait_for
from chromium import chromium

pytestmark = pytest.mark.slow

INSTANCES = 6  # 2 controllers (a backup to show), 2 mail stores, an admin API, a projector
UP_ARGS = ("--controllers", "2", "--mailstores", "2", "--edges", "0", "--sipfarms", "0")


def artifacts() -> Path:
    path = Path(os.environ.get("COLONY_TEST_ARTIFACTS", "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path / "chromium") as driver:
        yield driver


@pytest.fixture
def cluster(tmp_path):
    data_dir, base = tmp_path / "colony", free_base_port()
    proc = start_up(data_dir, base, *UP_ARGS)
    try:
        nodes = wait_for(lambda: all_ready(data_dir, INSTANCES), 240, f"{INSTANCES} READY instances")
        token_file = data_dir / "admin.token"
        wait_for(token_file.exists, 60, "the bootstrap admin token")
        api = next(n["addresses"]["http"] for n in nodes if n["role"] == "admin-api")
        yield {"data_dir": data_dir, "nodes": nodes, "api": f"http://{api}", "token": token_file.read_text().strip()}
    finally:
        stop_up(proc)


def domain_admin_token(api: str, token: str) -> str:
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api, headers=auth, timeout=30) as http:
        assert http.post("/v1/domains", json={"name": "monitor.example"}).status_code == 201
        made = http.post("/v1/tokens", json={"name": "dom", "role": "domain-admin", "domain": "monitor.example"})
        assert made.status_code == 201, made.text
        return made.json()["token"]


def click_live(driver, selector: str, timeout: float, what: str) -> None:
    """Click the element ``selector`` finds, in one script turn: the live feed re-renders a
    node's row whenever its record changes, so an element found by one WebDriver call may be
    gone (stale) by the next."""
    wait_in_browser(driver, lambda d: d.execute_script(
        "const e = document.querySelector(arguments[0]); if (!e) return false; e.click(); return true;",
        selector), timeout, what)


def wait_in_browser(driver, condition, timeout: float, what: str):
    """Poll the page (no reload) until ``condition(driver)`` is truthy."""
    from selenium.common.exceptions import JavascriptException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = driver.execute_script(condition) if isinstance(condition, str) else condition(driver)
        except (StaleElementReferenceException, JavascriptException):
            result = None  # the page is being replaced (a form post's redirect): look again
        if result:
            return result
        time.sleep(0.3)
    driver.save_screenshot(str(artifacts() / "monitor-timeout.png"))
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def row_state(node: str) -> str:
    return (f"const r = document.querySelector('#nodes tr[data-node=\"{node}\"]');"
            "return r ? r.dataset.state + '/' + r.dataset.drained : null;")


def log_in(driver, api: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{api}/monitor")
    field = driver.find_element(By.ID, "token")  # not logged in: redirected to the form
    field.send_keys(token)
    driver.find_element(By.ID, "login").click()
    # click() returns before the form post's answer has replaced the page: wait for the
    # outcome (the session cookie, or the refusal shown on the form) before anyone reads it.
    wait_in_browser(driver, lambda d: d.get_cookie("colony_monitor") or d.execute_script(
        "const e = document.getElementById('error'); return e && e.textContent.trim();"), 60,
        "the login's outcome")


def test_monitor_page_drains_and_readies_a_mail_store_live(cluster, browser):
    from selenium.webdriver.common.by import By

    api = cluster["api"]

    # A domain administrator's token opens nothing here.
    log_in(browser, api, domain_admin_token(api, cluster["token"]))
    assert "Only a system administrator" in browser.find_element(By.ID, "error").text
    assert browser.get_cookie("colony_monitor") is None
    with httpx.Client(base_url=api, timeout=30) as http:
        assert http.get("/monitor/events").status_code == 401
        assert http.post("/monitor/nodes/x/drain").status_code == 401

    log_in(browser, api, cluster["token"])
    cookie = browser.get_cookie("colony_monitor")
    assert cookie and cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    ids = sorted(n["id"] for n in cluster["nodes"])
    wait_in_browser(browser, "return document.getElementById('live').textContent === 'live';", 60, "the live feed")
    shown = browser.execute_script("return [...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.node).sort();")
    assert shown == ids
    browser.execute_script("window.notReloaded = true;")

    store = next(n["id"] for n in cluster["nodes"] if n["role"] == "mailstore")
    drain = f'#nodes tr[data-node="{store}"] button.cmd-drain'
    wait_in_browser(browser, lambda d: d.execute_script(
        "const e = document.querySelector(arguments[0]); return e && e.textContent.trim();", drain) == "Make Not-Ready",
        30, f"{store}'s button to read Make Not-Ready")
    click_live(browser, drain, 30, f"{store}'s drain button")
    wait_in_browser(browser, lambda d: d.execute_script(row_state(store)) == "NOT_READY/yes", 120,
                    f"{store} NOT_READY and drained")
    assert next(n for n in status_json(cluster["data_dir"]) if n["id"] == store)["state"] == "NOT_READY"
    browser.save_screenshot(str(artifacts() / "monitor-drained.png"))

    click_live(browser, f'#nodes tr[data-node="{store}"] button.cmd-ready', 30, f"{store}'s ready button")
    wait_in_browser(browser, lambda d: d.execute_script(row_state(store)) == "READY/no", 120, f"{store} READY again")
    assert browser.execute_script("return window.notReloaded === true;"), "the page was reloaded"
    transitions = browser.find_element(By.ID, "transitions").text
    assert store in transitions and "NOT_READY" in transitions
    browser.save_screenshot(str(artifacts() / "monitor.png"))

    # The session cookie alone does not make a POST: the page's CSRF token must come with it.
    with httpx.Client(base_url=api, timeout=30, cookies={"colony_monitor": cookie["value"]}) as http:
        refused = http.post(f"/monitor/nodes/{store}/drain")
        assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
        assert http.post(f"/monitor/nodes/{store}/drain", headers={"X-CSRF-Token": "forged"}).status_code == 403
        # Swagger UI comes from the admin API itself, not a CDN.
        docs = http.get("/docs").text
        assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs
        assert http.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert next(n for n in status_json(cluster["data_dir"]) if n["id"] == store)["state"] == "READY"
