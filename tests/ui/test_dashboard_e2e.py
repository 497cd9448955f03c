"""The dashboard end to end in real headless Chromium (Debian's chromium + chromedriver).

A real hub (HTTP on a free port, Mosquitto, rollout controller) with simulated devices
running the real daemon; a rollout is running. The browser logs in, sees the device
count and the rollout, an admin presses Pause and the API shows the rollout paused;
a read-only user sees no action buttons and the API refuses the action. Screenshots of
every page go to $EDGEFLEET_ARTIFACTS (default test-artifacts/).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import REQUIRE_SERVICES

ADMIN, VIEWER = "admin-key-0123456789abcdef", "viewer-key-0123456789abcdef"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("EDGEFLEET_ARTIFACTS", "test-artifacts")) / "ui"


def _require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        msg = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver)"
        if REQUIRE_SERVICES:
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, keypair):
    """Hub + 6 simulated devices + a running rollout held in its shadow stage."""
    from tests.conftest import require_service

    host, port = require_service("mosquitto")
    _require_browser()
    from cloud_hub.demo.models import build_bundle
    from cloud_hub.demo.runtime import LocalHub, wait_for
    from devices.simulator import Fleet

    d = tmp_path_factory.mktemp("ui")
    champion = build_bundle("champion", "1.0.0", d / "champion", keypair[0])
    challenger = build_bundle("challenger", "2.0.0", d / "challenger", keypair[0])
    run = uuid.uuid4().hex[:6]
    prefix = f"ui{run}/v1"
    hub = LocalHub(d / "hub", mqtt_url=f"mqtt://{host}:{port}", trusted_keys=[keypair[1]], tick_s=0.3,
                   silent_after_s=30, mqtt_prefix=prefix, admin_keys=[ADMIN], viewer_keys=[VIEWER])
    hub.start()
    fleet = None
    try:
        hub.hub.registry.push(champion, aliases=["champion"])
        hub.hub.registry.push(challenger)
        fleet = Fleet(6, hub_url=hub.url, mqtt_url=hub.hub.fleet.mqtt_url, prefix=prefix, bundle=champion,
                      public_keys=[keypair[1], hub.hub_public_key], interval_s=0.5, request_rate=4.0, batch=4,
                      id_prefix=f"ui{run}")  # MQTT client ids must be unique on a shared broker
        fleet.start(timeout=60)
        wait_for(lambda: sum(1 for x in hub.hub.fleet.devices() if x.online) >= 6, 30, what="6 devices online")
        plan = {"shadow": {"percent": 100, "min_duration": "1h", "min_samples": 10**9, "timeout": "2h"},
                "stages": [{"percent": 100, "min_duration": "1h"}],
                # this test is about the page, not the gates: never pause on slow installs here
                # (nor roll back on the challenger's different scores once enough telemetry arrived)
                "gates": {"max_unknown_fraction": 1.0, "max_psi": 1e6, "max_decision_change": 0.999,
                          "max_error_rate": 0.999, "max_p99_ms": 1e6}}
        ro = hub.rollouts.start("cancer-risk:2.0.0", "", plan)
        yield hub, fleet, ro["id"], f"ui{run}"
    finally:
        if fleet is not None:
            fleet.stop()
        hub.stop()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


def _wait(drv, cond, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            got = cond(drv)
            if got:
                return got
        except Exception as exc:  # element not there yet, stale after a refresh
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last}); page: "
                         f"{drv.find_element('tag name', 'main').text[:500]}")


def _do(action, timeout: float = 10.0):
    """Run a browser action again when the page re-rendered under it (it refreshes every 2 s)."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except StaleElementReferenceException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _type(drv, element_id: str, text: str) -> None:
    """Replace an input's value by typing (one key sequence, so a re-render cannot split it)."""
    from selenium.webdriver.common.keys import Keys

    _do(lambda: drv.find_element("id", element_id).send_keys(Keys.CONTROL, "a", Keys.NULL, Keys.BACKSPACE, text))


def _shot(drv, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    p = ARTIFACTS / f"{name}.png"
    drv.save_screenshot(str(p))
    return p


def _login(drv, url: str, key: str) -> None:
    drv.get(url + "/ui")
    box = _wait(drv, lambda d: d.find_element("id", "api-key"), what="login form")
    box.send_keys(key)
    _do(lambda: drv.find_element("id", "login-button").click())
    _wait(drv, lambda d: "role:" in d.find_element("id", "whoami").text, what="logged in")


def test_admin_sees_fleet_and_pauses_a_running_rollout(stack, browser):
    hub, _fleet, rid, ids = stack
    drv = browser
    _login(drv, hub.url, ADMIN)
    assert "role: admin" in drv.find_element("id", "whoami").text
    count = _wait(drv, lambda d: d.find_element("css selector", "#count-devices .n").text == "6"
                  and d.find_element("css selector", "#count-devices .n"), what="device count 6")
    assert count.text == "6"
    online = int(drv.find_element("css selector", "#count-online .n").text)
    offline = int(drv.find_element("css selector", "#count-offline .n").text)
    assert online + offline == 6 and online >= 1
    assert drv.find_element("css selector", "#count-rollouts .n").text == "1"
    body = drv.find_element("tag name", "main").text
    assert f"{ids}-0000" in body and "cancer-risk:1.0.0" in body
    _shot(drv, "fleet")

    drv.get(hub.url + f"/ui#/device/{ids}-0001")
    _wait(drv, lambda d: f"Device {ids}-0001" in d.find_element("tag name", "main").text, what="device page")
    _wait(drv, lambda d: "Running vs desired" in d.find_element("tag name", "main").text, what="device detail")
    _shot(drv, "device")

    drv.get(hub.url + "/ui#/models")
    _wait(drv, lambda d: "cancer-risk" in d.find_element("tag name", "main").text
          and "champion → 1.0.0" in d.find_element("tag name", "main").text, what="models page")
    _shot(drv, "models")

    drv.get(hub.url + "/ui#/rollouts")
    _wait(drv, lambda d: rid in d.find_element("tag name", "main").text, what="rollout listed")
    _shot(drv, "rollouts")

    drv.get(hub.url + f"/ui#/rollout/{rid}")
    pause = _wait(drv, lambda d: (b := d.find_element("id", "rollout-pause")).is_enabled() and b, what="pause button")
    assert pause.get_attribute("aria-label") == f"Pause rollout {rid}"
    text = drv.find_element("tag name", "main").text
    assert "running" in text and "Stage timeline" in text and "Gates" in text
    _shot(drv, "rollout-running")
    pause.click()
    drv.switch_to.alert.accept()
    _wait(drv, lambda d: "paused" in d.find_element("id", "rollout-status").text, what="paused badge")
    api = httpx.get(f"{hub.url}/v1/rollouts/{rid}", headers={"Authorization": f"Bearer {VIEWER}"}).json()
    assert api["status"] == "paused"
    assert "dashboard" in (api["reason"] or "")  # the reason the page sends is recorded
    _shot(drv, "rollout-paused")
    # resume again so the next test sees a running rollout
    _wait(drv, lambda d: d.find_element("id", "rollout-resume").is_enabled(), what="resume enabled")
    _do(lambda: drv.find_element("id", "rollout-resume").click())
    drv.switch_to.alert.accept()
    _wait(drv, lambda d: "running" in d.find_element("id", "rollout-status").text, what="running again")


def test_read_only_user_sees_everything_but_cannot_act(stack, browser):
    hub, _fleet, rid, _ids = stack
    drv = browser
    _login(drv, hub.url, VIEWER)
    assert "role: viewer" in drv.find_element("id", "whoami").text
    _wait(drv, lambda d: d.find_element("css selector", "#count-devices .n").text == "6", what="device count")
    drv.get(hub.url + f"/ui#/rollout/{rid}")
    _wait(drv, lambda d: "Read-only" in d.find_element("tag name", "main").text, what="read-only note")
    assert not drv.find_elements("id", "rollout-pause")
    _shot(drv, "rollout-read-only")
    # The session cookie of a viewer cannot act, even with the CSRF token (the API refuses it).
    status = drv.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const csrf = (document.cookie.match(/edgefleet_csrf=([^;]+)/) || [])[1] || "";
        fetch(arguments[0], {method: "POST", credentials: "same-origin",
              headers: {"X-CSRF-Token": csrf, "Content-Type": "application/json"}, body: "{}"})
          .then(r => done(r.status));""", f"/v1/rollouts/{rid}/pause")
    assert status == 403
    r = httpx.post(f"{hub.url}/v1/rollouts/{rid}/pause", headers={"Authorization": f"Bearer {VIEWER}"})
    assert r.status_code == 403 and "admin" in r.json()["error"]
    assert httpx.get(f"{hub.url}/v1/rollouts/{rid}", headers={"X-API-Key": VIEWER}).json()["status"] == "running"


def test_phone_width_and_login_errors(stack, browser):
    hub, _fleet, _rid, _ids = stack
    drv = browser
    drv.set_window_size(390, 844)
    drv.get(hub.url + "/ui")
    box = _wait(drv, lambda d: d.find_element("id", "api-key"), what="login form")
    assert drv.find_element("css selector", "label[for=api-key]").text == "API key"
    box.send_keys("wrong-key-wrong-key")
    _do(lambda: drv.find_element("id", "login-button").click())
    _wait(drv, lambda d: "invalid API key" in d.find_element("css selector", "[role=alert]").text, what="error")
    box = drv.find_element("id", "api-key")
    box.clear()
    box.send_keys(VIEWER)
    _do(lambda: drv.find_element("id", "login-button").click())
    _wait(drv, lambda d: d.find_element("css selector", "#count-devices .n").text == "6", what="fleet on a phone")
    width = drv.execute_script("return document.documentElement.scrollWidth")
    assert width <= 400, f"page is {width}px wide on a 390px screen (tables must scroll inside their box)"
    _shot(drv, "fleet-phone")


def test_cross_site_post_is_refused(stack):
    hub, _fleet, rid, _ids = stack
    r = httpx.post(f"{hub.url}/v1/rollouts/{rid}/pause", headers={"Origin": "http://evil.example",
                                                                  "Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 403 and r.json()["code"] == "csrf"
    r = httpx.post(f"{hub.url}/v1/rollouts/{rid}/pause", cookies={"edgefleet_key": ADMIN, "edgefleet_csrf": "t"})
    assert r.status_code == 403 and r.json()["code"] == "csrf"


def test_admin_starts_a_rollout_from_the_page_and_devices_move(stack, browser):
    """Issue 20: cohort selector with a live preview, the plan validated as a plan file, a
    confirmation restating it, then the rollout runs and the cohort's devices install it."""
    from selenium.webdriver.support.ui import Select

    hub, _fleet, rid, ids = stack
    admin = {"Authorization": f"Bearer {ADMIN}"}
    httpx.post(f"{hub.url}/v1/rollouts/{rid}/abort", headers=admin, json={"reason": "make room"})
    deadline = time.monotonic() + 30
    while httpx.get(f"{hub.url}/v1/rollouts/{rid}", headers=admin).json()["status"] != "aborted":
        assert time.monotonic() < deadline, "the fixture's rollout did not abort"
        time.sleep(0.3)
    drv = browser
    _login(drv, hub.url, ADMIN)
    drv.get(hub.url + "/ui#/rollouts")
    _wait(drv, lambda d: d.find_element("id", "start-form"), what="start form")
    _do(lambda: Select(drv.find_element("id", "ro-model")).select_by_value("cancer-risk:2.0.0"))
    _type(drv, "ro-cohort", f"id in ({ids}-0000,{ids}-0001,{ids}-0002)")
    _wait(drv, lambda d: d.find_element("id", "cohort-preview").text.startswith("3 devices match"), what="preview 3")
    assert f"{ids}-0000, {ids}-0001, {ids}-0002" in drv.find_element("id", "cohort-preview").text
    # an invalid plan is refused with the plan file's message, nothing started
    _type(drv, "ro-stages", "50,20")
    _do(lambda: drv.find_element("id", "ro-review-button").click())
    _wait(drv, lambda d: "canary percentages must increase" in d.find_element("id", "ro-error").text, what="plan error")
    _type(drv, "ro-stages", "100")
    for fid, value in (("ro-duration", "0s"), ("ro-samples", "1"), ("gate-max_unknown_fraction", "1")):
        _type(drv, fid, value)
    _do(lambda: drv.find_element("id", "ro-review-button").click())
    summary = _wait(drv, lambda d: d.find_element("id", "ro-summary"), what="confirmation").text
    assert "cancer-risk:2.0.0" in summary and "(3 devices now" in summary and "canary-100%: 100 %" in summary
    assert "max_p99_ms 200" in summary
    _shot(drv, "rollout-start-confirm")
    assert drv.switch_to.active_element.get_attribute("id") == "ro-confirm"  # keyboard: Enter confirms
    drv.switch_to.active_element.send_keys("\n")
    _wait(drv, lambda d: "Rollout " in d.find_element("tag name", "h1").text and "#/rollout/" in d.current_url,
          what="rollout page")
    new_id = drv.current_url.split("#/rollout/")[1]
    ro = httpx.get(f"{hub.url}/v1/rollouts/{new_id}", headers=admin).json()
    assert ro["status"] in ("running", "completed") and ro["candidate"]["version"] == "2.0.0"
    assert ro["cohort"].startswith("id in")

    def moved(_d) -> bool:  # the cohort's devices now run the candidate; the others do not
        devs = {d["id"]: d for d in httpx.get(f"{hub.url}/v1/devices", headers=admin).json()["devices"]}
        ver = {k: (next((b for b in d["bundles"] if b["slot"] == "active"), {}) or {}).get("version")
               for k, d in devs.items()}
        return all(ver[f"{ids}-000{i}"] == "2.0.0" for i in range(3)) and ver[f"{ids}-0005"] == "1.0.0"

    _wait(drv, moved, timeout=60, what="cohort devices running 2.0.0")
    _shot(drv, "rollout-started-from-page")


def test_admin_moves_an_alias_viewer_sees_no_alias_form(stack, browser):
    hub, _fleet, _rid, _ids = stack
    drv = browser
    _login(drv, hub.url, ADMIN)
    drv.get(hub.url + "/ui#/models")
    _wait(drv, lambda d: d.find_element("id", "alias-name-cancer-risk"), what="alias form")
    _type(drv, "alias-name-cancer-risk", "staging")
    from selenium.webdriver.support.ui import Select

    _do(lambda: Select(drv.find_element("id", "alias-version-cancer-risk")).select_by_value("2.0.0"))
    _do(lambda: drv.find_element("id", "alias-move-cancer-risk").click())
    alert = drv.switch_to.alert
    assert "cancer-risk@staging at version 2.0.0 (new alias)" in alert.text
    alert.accept()
    _wait(drv, lambda d: "staging → 2.0.0" in d.find_element("tag name", "main").text, what="alias moved")
    got = httpx.get(f"{hub.url}/v1/models/cancer-risk/aliases", headers={"X-API-Key": VIEWER}).json()
    assert got["aliases"]["staging"] == "2.0.0"
    _shot(drv, "models-alias-moved")

    drv.delete_all_cookies()
    _login(drv, hub.url, VIEWER)
    drv.get(hub.url + "/ui#/models")
    _wait(drv, lambda d: "staging → 2.0.0" in d.find_element("tag name", "main").text, what="models as viewer")
    assert not drv.find_elements("css selector", "form[id^=alias-form]")
    assert not drv.find_elements("tag name", "button") or all(
        b.get_attribute("id") == "logout" for b in drv.find_elements("tag name", "button"))
    drv.get(hub.url + "/ui#/rollouts")
    _wait(drv, lambda d: "Rollouts (" in d.find_element("tag name", "main").text, what="rollouts as viewer")
    assert not drv.find_elements("id", "start-form")
    status = drv.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const csrf = (document.cookie.match(/edgefleet_csrf=([^;]+)/) || [])[1] || "";
        fetch("/v1/models/cancer-risk/aliases/staging", {method: "PUT", credentials: "same-origin",
              headers: {"X-CSRF-Token": csrf, "Content-Type": "application/json"},
              body: JSON.stringify({version: "1.0.0"})}).then(r => done(r.status));""")
    assert status == 403
    got = httpx.get(f"{hub.url}/v1/models/cancer-risk/aliases", headers={"X-API-Key": VIEWER}).json()
    assert got["aliases"]["staging"] == "2.0.0"


def test_rollout_report_download(stack, browser):
    hub, _fleet, rid, _ids = stack
    drv = browser
    _login(drv, hub.url, VIEWER)
    drv.get(hub.url + f"/ui#/rollout/{rid}")
    link = _wait(drv, lambda d: d.find_element("id", "rollout-report"), what="report link")
    assert link.get_attribute("download") == f"rollout-{rid}.html"
    href = link.get_attribute("href")
    r = httpx.get(href, headers={"X-API-Key": VIEWER})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert f'filename="rollout-{rid}.html"' in r.headers["content-disposition"]
    html = r.text
    status = httpx.get(f"{hub.url}/v1/rollouts/{rid}", headers={"X-API-Key": VIEWER}).json()["status"]
    assert f"edgefleet rollout {rid}" in html and f">{status}</span>" in html and "<svg" in html
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # self-contained
    assert httpx.get(f"{hub.url}/ui/data/rollouts/nosuch/report", headers={"X-API-Key": VIEWER}).status_code == 404
    assert httpx.get(href).status_code == 401


def test_jobs_page_lists_schedules_admin_pauses_viewer_cannot(stack, browser, tmp_path):
    hub, _fleet, _rid, _ids = stack
    admin = {"Authorization": f"Bearer {ADMIN}"}
    r = httpx.post(f"{hub.url}/v1/schedules", headers=admin,
                   json={"name": "ui-nightly", "cron": "0 3 * * *", "model": "cancer-risk@champion",
                         "input": str(tmp_path / "in.csv"), "output": str(tmp_path / "out-{date}.parquet")})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    drv = browser
    _login(drv, hub.url, ADMIN)
    drv.get(hub.url + "/ui#/jobs")
    btn = _wait(drv, lambda d: d.find_element("id", f"schedule-toggle-{sid}"), what="schedule listed")
    assert "ui-nightly" in drv.find_element("tag name", "main").text and btn.text == "Pause"
    btn.click()
    drv.switch_to.alert.accept()
    _wait(drv, lambda d: d.find_element("id", f"schedule-toggle-{sid}").text == "Resume", what="paused")
    assert httpx.get(f"{hub.url}/v1/schedules/{sid}", headers=admin).json()["paused"] is True
    _shot(drv, "jobs")
    drv.delete_all_cookies()
    _login(drv, hub.url, VIEWER)
    drv.get(hub.url + "/ui#/jobs")
    _wait(drv, lambda d: "ui-nightly" in d.find_element("tag name", "main").text, what="jobs as viewer")
    assert not drv.find_elements("css selector", "main button")


_WATCH_ELEMENT = """
var id = arguments[0], main = document.querySelector("main");
window.__watch = {renders: 0, missing: 0};
new MutationObserver(function (changes) {
  if (changes.some(function (c) { return c.target === main; })) window.__watch.renders++;
  if (!document.getElementById(id)) window.__watch.missing++;
}).observe(main, {childList: true, subtree: true});
"""


def test_admin_attaches_a_shadow_and_starts_and_stops_a_split(stack, browser):
    from selenium.webdriver.support.ui import Select

    hub, _fleet, _rid, _ids = stack
    key = {"X-API-Key": ADMIN}
    # the rollout test may have made 2.0.0 the champion: shadow and challenger = the other version
    champ = httpx.get(f"{hub.url}/v1/models/cancer-risk/aliases", headers=key).json()["aliases"]["champion"]
    other = "1.0.0" if champ == "2.0.0" else "2.0.0"
    httpx.put(f"{hub.url}/v1/models/cancer-risk/aliases/challenger", headers=key, json={"version": other})
    drv = browser
    _login(drv, hub.url, ADMIN)
    drv.get(hub.url + "/ui#/models")
    _wait(drv, lambda d: d.find_element("id", "shadow-attach-cancer-risk"), what="serving panel")
    _do(lambda: Select(drv.find_element("id", "shadow-version-cancer-risk")).select_by_value(other))
    _do(lambda: drv.find_element("id", "shadow-attach-cancer-risk").click())
    _wait(drv, lambda d: [s["version"] for s in httpx.get(f"{hub.url}/v1/models/cancer-risk/shadows",
                                                           headers=key).json()["shadows"]] == [other],
          what="shadow attached")
    _wait(drv, lambda d: d.find_element("id", f"shadow-detach-cancer-risk-{other}"), what="detach button")
    # the page refreshes every 2 s and fills the serving panel from its own requests: across two
    # refreshes the button is never missing from the page (it used to blink out while the panel
    # waited for its data, so a click could find nothing)
    drv.execute_script(_WATCH_ELEMENT, f"shadow-detach-cancer-risk-{other}")
    _wait(drv, lambda d: d.execute_script("return window.__watch.renders") >= 2, what="two refreshes")
    assert drv.execute_script("return window.__watch.missing") == 0
    _type(drv, "split-fraction-cancer-risk", "0.25")
    _do(lambda: drv.find_element("id", "split-put-cancer-risk").click())
    drv.switch_to.alert.accept()
    _wait(drv, lambda d: httpx.get(f"{hub.url}/v1/models/cancer-risk/split", headers=key).status_code == 200,
          what="split created")
    assert httpx.get(f"{hub.url}/v1/models/cancer-risk/split", headers=key).json()["challenger_fraction"] == 0.25
    text = _wait(drv, lambda d: "evaluation verdict" in (t := d.find_element("id", "split-cancer-risk").text) and t,
                 what="verdict shown")
    assert "25.0 % to @challenger" in text
    _shot(drv, "models-shadow-split")
    _do(lambda: drv.find_element("id", "split-stop-cancer-risk").click())
    drv.switch_to.alert.accept()
    _wait(drv, lambda d: httpx.get(f"{hub.url}/v1/models/cancer-risk/split", headers=key).status_code == 404,
          what="split removed")
    _wait(drv, lambda d: d.find_element("id", f"shadow-detach-cancer-risk-{other}"), what="detach button again")
    _do(lambda: drv.find_element("id", f"shadow-detach-cancer-risk-{other}").click())
    drv.switch_to.alert.accept()
    _wait(drv, lambda d: httpx.get(f"{hub.url}/v1/models/cancer-risk/shadows", headers=key).json()["shadows"] == [],
          what="shadow detached")
