"""The console at /console and the samples behind it (frontend/console.py, frontend/status.py).

End to end in headless Chromium (Debian's `chromium` and `chromium-driver`, driven by
Selenium) against a running `mark serve --demo`: sign in with the admin token, the page shows
the demo model, inference traffic arrives, and the demand plot the page refreshes by itself
shows it. Chromium missing: the set-up installs it with apt-get when it may (root;
tests/apt.py), else the browser test skips with the reason; MARK_REQUIRE_BROWSER=1 (CI,
`.ci/run`) turns the skip into a failure. The sign-in rules are also checked over plain HTTP,
and the sampling and rendering on values.
"""

from __future__ import annotations

import http.cookies
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from frontend.console import COOKIE, render_panels, session_value
from frontend.status import FORECAST_METRIC, Counters, Reading, Sampler
from mark.core.config import load_config
from mark.core.types import (
    ActionKind,
    Decision,
    Instance,
    InstanceState,
    Market,
    Model,
    Offering,
    Profile,
    Slo,
)
from tests.apt import apt_install, skip_or_fail
from tests.conftest import Served
from tests.test_admin_api import call
from tests.test_serve_inference import README_BODY
from tests.test_status_cli import FAST_TICKS, wait_for_running

REQUIRE_ENV = "MARK_REQUIRE_BROWSER"
NOW = 1_800_000_000.0

# --- sampling and rendering, on values -----------------------------------------------------

MODEL = Model(
    name="resnet",
    slo=Slo(latency_ms=600.0, percentile=0.98),
    profiles={"c5.large": Profile(instance_type="c5.large", latency_ms={1: 180.0})},
    max_batch=1,
)
OFFERING = Offering(
    instance_type="c5.large", zone="us-east-1a", market=Market.SPOT, price_per_hour=0.04
)


def instance(iid: str, state: InstanceState) -> Instance:
    running = state != InstanceState.PENDING
    return Instance(
        id=iid,
        offering=OFFERING,
        models=("resnet",),
        state=state,
        launched_at_s=NOW - 600,
        running_at_s=NOW - 500 if running else None,
    )


def reading(at_s: float, requests: float, met: float, **kw: Any) -> Reading:
    values: dict[str, Any] = {
        "at_s": at_s,
        "models": [MODEL],
        "instances": [
            instance("i-1", InstanceState.RUNNING),
            instance("i-2", InstanceState.PENDING),
        ],
        "prices": {OFFERING.key: 0.05},  # the spot pool's price moved since the launch
        "counters": {"resnet": Counters(requests, met, requests)},
        "forecasts": {"resnet": 3.0, "gone": 9.0},
        "cost_usd": 0.5,
        "instances_usd": 0.4,
        "serverless_usd": 0.1,
        "per_model_usd": {"resnet": 0.5},
    }
    return Reading(**{**values, **kw})


def test_samples_give_rates_attainment_capacity_and_spend() -> None:
    sampler = Sampler(load_config(environ={}))
    first = sampler.status(reading(NOW, 100, 100), [])
    (m,) = first.models
    assert m.rate_rps is None and m.slo_attainment_recent is None  # nothing sampled yet
    assert m.slo_attainment == 1.0 and m.requests == 100 and m.instances == 2
    sampler.add(reading(NOW, 100, 100))
    assert not sampler.history  # one sample alone has no rate
    sampler.add(reading(NOW + 5, 150, 140))
    (point,) = sampler.history
    assert point.demand_rps == pytest.approx(10.0)
    cap = sampler.capacity_rps(MODEL, [instance("i-1", InstanceState.RUNNING)])
    assert cap > 0 and point.capacity_rps == pytest.approx(cap)  # the pending one adds none
    assert point.forecast_upper_rps == 3.0  # the unregistered model's stale gauge is left out
    assert point.usd_per_hour == pytest.approx(0.10)  # both at the pool's current price
    status = sampler.status(reading(NOW + 10, 200, 180), [])
    (m,) = status.models
    assert m.rate_rps == pytest.approx(10.0)  # (200 - 100) / 10 s, the window's oldest sample
    assert m.slo_attainment_recent == pytest.approx(0.8)  # (180 - 100) / (200 - 100)
    assert m.slo_attainment == pytest.approx(0.9) and m.forecast_upper_rps == 3.0
    assert [(g.state, g.count) for g in status.instances] == [
        (InstanceState.PENDING, 1),
        (InstanceState.RUNNING, 1),
    ]
    assert status.spend.usd_per_hour == pytest.approx(0.10) and status.spend.total_usd == 0.5


def test_panels_escape_what_users_and_clouds_wrote() -> None:
    sampler = Sampler(load_config(environ={}))
    for k in range(3):
        sampler.add(reading(NOW + 5 * k, 100 + 10 * k, 100 + 10 * k))
    evil = Decision(at_s=NOW, action=ActionKind.HOLD, reason="<script>alert(1)</script>")
    page = render_panels(sampler.status(reading(NOW + 15, 130, 130), [evil]))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'data-series="demand" data-values="2,2"' in page
    assert 'id="cost-plot" data-points="2"' in page


def test_the_forecast_gauge_is_the_control_planes() -> None:
    from mark.apps.control.metrics import FORECAST

    (family,) = FORECAST.describe()
    assert family.name == FORECAST_METRIC


# --- sign-in over plain HTTP ---------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def fetch(
    served: Served, method: str, path: str, *, data: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(served.base_url + path, data=data, method=method)
    for k, v in headers.items():
        req.add_header(k.replace("_", "-"), v)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, dict(r.headers.items()), r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers.items()), e.read().decode()


def test_sign_in_keeps_the_token_out_of_urls_and_cookies(
    serve_factory: Any, tmp_path: Path
) -> None:
    served = serve_factory(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}", extra_args=("--demo",))
    code, headers, body = fetch(served, "GET", "/console")
    assert code == 401 and 'method="post" action="/console/login"' in body
    assert "script-src 'nonce-" in headers["Content-Security-Policy"]
    form = "application/x-www-form-urlencoded"
    code, headers, body = fetch(
        served, "POST", "/console/login", data=b"token=guess", Content_Type=form
    )
    assert code == 401 and "Set-Cookie" not in headers and "not the admin token" in body
    assert fetch(served, "GET", "/console/panels")[0] == 401

    login = f"token={served.token}".encode()
    code, headers, _ = fetch(served, "POST", "/console/login", data=login, Content_Type=form)
    assert code == 303 and headers["Location"] == "/console"
    cookie = http.cookies.SimpleCookie(headers["Set-Cookie"])[COOKIE]
    assert cookie.value == session_value(served.token) and served.token not in cookie.value
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console"

    session = f"{COOKIE}={cookie.value}"
    code, headers, body = fetch(served, "GET", "/console", Cookie=session)
    assert code == 200 and '<div id="panels">' in body and "/console/panels" in body
    nonce = headers["Content-Security-Policy"].split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in body
    code, _, panels = fetch(served, "GET", "/console/panels", Cookie=session)
    assert code == 200 and "<td>demo</td>" in panels
    assert fetch(served, "GET", "/console/panels", Cookie=f"{COOKIE}=forged")[0] == 401
    code, _, panels = fetch(
        served, "GET", "/console/panels", Authorization=served.auth["Authorization"]
    )
    assert code == 200 and "<td>demo</td>" in panels

    code, headers, _ = fetch(served, "POST", "/console/logout", Cookie=session)
    gone = http.cookies.SimpleCookie(headers["Set-Cookie"])[COOKIE]
    assert code == 303 and gone.value == "" and gone["path"] == "/console"
    assert served.token not in served.log()


# --- in headless Chromium ------------------------------------------------------------------


def _chromium() -> tuple[str, str]:
    """(chromium, chromedriver), installed when missing and allowed."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        why = apt_install("chromium", "chromium-driver")
        if why is not None:
            skip_or_fail(f"Chromium is not installed and {why}", REQUIRE_ENV)
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        skip_or_fail("the chromium packages put no chromium and chromedriver on PATH", REQUIRE_ENV)
    return chromium, driver


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip_or_fail("selenium is not installed (pip install -e '.[dev]')", REQUIRE_ENV)
    chromium, driver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # --no-sandbox: Chromium's sandbox cannot start as root, which the test machines run as.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    # Given the driver's path, Selenium asks no Selenium Manager (which would download one).
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()


def _demand(page: Any) -> list[float] | None:
    from selenium.webdriver.common.by import By

    lines = page.find_elements(By.CSS_SELECTOR, '#demand-plot polyline[data-series="demand"]')
    if not lines:
        return None
    raw = lines[0].get_attribute("data-values") or ""
    return [float(v) for v in raw.split(",") if v]


def test_the_console_in_chromium_shows_the_demo_and_its_traffic(
    serve_factory: Any, tmp_path: Path, browser: Any
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    served = serve_factory(
        f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", extra_args=("--demo",), config_text=FAST_TICKS
    )
    wait_for_running(served)

    def wait(timeout_s: float) -> WebDriverWait[Any]:
        return WebDriverWait(
            browser,
            timeout_s,
            poll_frequency=0.2,
            ignored_exceptions=[StaleElementReferenceException],
        )

    browser.get(served.base_url + "/console")
    assert "sign in" in browser.title
    browser.find_element(By.ID, "token").send_keys(served.token)
    browser.find_element(By.ID, "sign-in").click()
    wait(15).until(lambda d: "demo" in d.find_element(By.ID, "models").text)
    assert served.token not in browser.current_url
    (cookie,) = browser.get_cookies()
    assert cookie["httpOnly"] and cookie["value"] != served.token
    assert "c5.large" in browser.find_element(By.ID, "instances").text
    assert "hold" in browser.find_element(By.ID, "decisions").text

    # Two samples make the first point; no traffic yet, so every point shows no demand.
    before = wait(20).until(_demand)
    assert before and not any(before), before

    sent = threading.Event()

    def traffic() -> None:
        for _ in range(40):
            assert call(served, "POST", "/v2/models/demo/infer", README_BODY, auth=False)[0] == 200
            time.sleep(0.05)
        sent.set()

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        # The page is not reloaded: its own refresh brings the new samples in.
        after = wait(30).until(lambda d: (v := _demand(d)) and any(v) and v)
    finally:
        sender.join()
    assert sent.is_set() and max(after) > 0, after
    assert "demo" in browser.find_element(By.ID, "models").text
