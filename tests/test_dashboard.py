"""``pillion dashboard`` in a real browser (issue 17): two apps with their sidecars, the dashboard
process, and Debian's headless chromium driven through its chromedriver by selenium.

Screenshots go to ``$PILLION_SCREENSHOT_DIR`` (default: the test's tmp folder).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.pubsub_support import BROKERS, FAST_RETRIES, Delivery, Reply, SubscriberApp
from tests.support import SidecarProcess, free_port, start_sidecar

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
T = TypeVar("T")

BROKEN_STORE = """
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: cache
spec:
  type: state.redis
  version: v1
  ignoreErrors: true
  metadata:
    - name: redisHost
      value: 127.0.0.1:1
"""


def eventually(check: Callable[[], T | None], timeout: float = 10, what: str = "the page") -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except Exception as exc:  # the page is being redrawn under us: look again
            found = None
            problem: object = exc
        else:
            problem = found
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not show up within {timeout}s (last: {problem!r})")
        time.sleep(0.1)


class Switch:
    def __init__(self) -> None:
        self.failing = True

    def __call__(self, delivery: Delivery) -> Reply:
        return (200, {"status": "DROP"}) if self.failing else (200, None)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail(
            "the dashboard tests need Debian's chromium and chromedriver: "
            "apt-get install -y chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,1500"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def start_dashboard(
    workdir: Path, run_dir: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (workdir / f"dashboard-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "dashboard", "--port", str(port), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PILLION_RUN_DIR": str(run_dir), **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (
            workdir / f"dashboard-{port}.log"
        ).read_text()
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def sidecar_for(
    workdir: Path, app: SubscriberApp, app_id: str, resources: dict[str, str], run_dir: Path
) -> SidecarProcess:
    sidecar = start_sidecar(
        workdir,
        app_id=app_id,
        resources=resources,
        extra_args=["--app-port", str(app.port)],
        env={"PILLION_RUN_DIR": str(run_dir)},
        wait_path="/v1.0/healthz",
    )
    # The app is served by this test process: its tree is what the app charts show.
    with sidecar.client() as client:
        assert client.put("/v1.0/metadata/appPID", content=str(os.getpid())).status_code == 204
    return sidecar


def text_of(driver: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, selector).text)


def test_the_dashboard_shows_apps_and_replays_a_dead_letter(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    shots = Path(os.environ.get("PILLION_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    run_dir = tmp_path / "run"
    switch = Switch()
    orders_app = SubscriberApp(
        [
            {"pubsubname": "pubsub", "topic": "orders", "route": "/orders", "deadLetterTopic": "orders-dead"},
            {
                "pubsubname": "pubsub",
                "topic": "payments",
                "routes": {
                    "rules": [{"match": 'event.type == "refund"', "path": "/refunds"}],
                    "default": "/payments",
                },
            },
        ],
        switch,
    ).start()
    shipping_app = SubscriberApp(
        [{"pubsubname": "pubsub", "topic": "shipments", "route": "/shipments"}]
    ).start()
    pubsub = BROKERS["sqlite"]("pubsub", tmp_path, "", FAST_RETRIES)
    sidecars = [
        sidecar_for(
            tmp_path / "checkout",
            orders_app,
            "checkout",
            {"pubsub.yaml": pubsub, "cache.yaml": BROKEN_STORE},
            run_dir,
        ),
        sidecar_for(tmp_path / "shipping", shipping_app, "shipping", {"pubsub.yaml": pubsub}, run_dir),
    ]
    dashboard, url = start_dashboard(tmp_path, run_dir)
    try:
        browser.get(url + "/")
        # Apps table: both apps, with their ports and health.
        eventually(
            lambda: (
                "checkout" in text_of(browser, "#apps tbody")
                and "shipping" in text_of(browser, "#apps tbody")
            )
        )
        rows = browser.find_elements(By.CSS_SELECTOR, "#apps tbody tr")
        assert [r.find_element(By.CSS_SELECTOR, "th").text for r in rows] == ["checkout", "shipping"]
        assert f"HTTP {sidecars[0].port}" in rows[0].text and "ready" in rows[0].text

        # Some traffic, and one message that the app drops into the dead-letter topic.
        with sidecars[0].client() as client:
            assert client.post("/v1.0/publish/pubsub/orders", json={"order": 42}).status_code == 204
        orders_app.wait_for(1, "/orders")
        eventually(
            lambda: rows[0].find_elements(By.CSS_SELECTOR, "td")[8].text == "1", what="the dead-letter count"
        )

        # Details of the chosen app (the first by default): components, subscriptions, charts.
        assert text_of(browser, "#details-heading").startswith("App checkout")
        components = text_of(browser, "#components tbody")
        assert "pubsub.sqlite" in components and "RETAINED_MESSAGES" in components
        assert "failed: " in components and "cache" in components
        subscriptions = text_of(browser, "#subscriptions tbody")
        assert "orders-dead" in subscriptions and 'event.type == "refund" → /refunds' in subscriptions
        eventually(
            lambda: browser.execute_script("return (state.history.get(state.selected) || []).length >= 3"),
            15,
            "chart history",
        )
        drawn = browser.execute_script(
            """
            const counts = {};
            for (const id of ["cpu-chart", "memory-chart"]) {
              const c = document.getElementById(id);
              const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
              let coloured = 0;  // the series' blue and orange, not the grey grid
              for (let i = 0; i < data.length; i += 4) {
                if (data[i + 3] && Math.abs(data[i] - data[i + 2]) > 60) coloured++;
              }
              counts[id] = coloured;
            }
            return counts;
            """
        )
        assert drawn["cpu-chart"] > 50 and drawn["memory-chart"] > 50, drawn
        assert "sidecar" in browser.find_element(By.ID, "memory-chart").get_attribute("aria-label")
        browser.save_screenshot(str(shots / "dashboard-overview.png"))

        # Dead letters: open the list from the subscription, show the message.
        browser.find_element(
            By.CSS_SELECTOR, "#subscriptions button[aria-label='Dead letters on orders-dead']"
        ).click()
        eventually(
            lambda: browser.find_elements(By.CSS_SELECTOR, "#letters tbody tr"), what="the dead letters"
        )
        row = browser.find_element(By.CSS_SELECTOR, "#letters tbody tr")
        assert "orders" in row.text and "DROP" in row.text
        row.find_element(By.XPATH, ".//button[text()='Show']").click()
        eventually(lambda: '"order": 42' in text_of(browser, "#letter-body"), what="the message")
        browser.save_screenshot(str(shots / "dashboard-dead-letter.png"))

        # Replay it with the keyboard only: focus Replay, Enter, Tab to Confirm, Enter.
        switch.failing = False
        replay = row.find_element(By.XPATH, ".//button[text()='Replay']")
        browser.execute_script("arguments[0].focus()", replay)
        replay.send_keys(Keys.ENTER)
        eventually(
            lambda: browser.find_element(By.ID, "confirm").get_attribute("open") is not None,
            what="the dialog",
        )
        assert browser.switch_to.active_element.get_attribute("id") == "confirm-cancel"
        browser.switch_to.active_element.send_keys(Keys.TAB)
        assert browser.switch_to.active_element.get_attribute("id") == "confirm-ok"
        browser.switch_to.active_element.send_keys(Keys.ENTER)
        eventually(
            lambda: "Replayed 1 message" in text_of(browser, "#letters-result"), what="the replay result"
        )
        delivered = orders_app.wait_for(2, "/orders")
        assert delivered[-1].event["data"] == {"order": 42}
        assert browser.find_elements(By.CSS_SELECTOR, "#letters tbody tr") == []
        browser.save_screenshot(str(shots / "dashboard-replayed.png"))

        # A stopped sidecar leaves the page within a few seconds; a new one appears.
        stopped = time.monotonic()
        sidecars[1].stop()
        eventually(
            lambda: "shipping" not in text_of(browser, "#apps tbody"), 5, "the stopped sidecar's removal"
        )
        gone_after = time.monotonic() - stopped
        sidecars.append(
            sidecar_for(tmp_path / "late", shipping_app, "late", {"pubsub.yaml": pubsub}, run_dir)
        )
        eventually(lambda: "late" in text_of(browser, "#apps tbody"), 5, "the new sidecar")
        assert gone_after < 5

        # Accessibility basics: one h1, headed sections, labelled inputs and charts, real buttons.
        assert len(browser.find_elements(By.TAG_NAME, "h1")) == 1
        headings = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "h2, h3") if h.text]
        assert {"Apps", "Components", "Subscriptions", "CPU and memory"} <= set(headings)
        for field in browser.find_elements(By.CSS_SELECTOR, "input"):
            assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{field.get_attribute('id')}']")
        assert browser.find_elements(By.CSS_SELECTOR, "canvas[role='img'][aria-label]")
        assert not browser.find_elements(By.CSS_SELECTOR, "[onclick], a:not([href])")
    finally:
        stop(dashboard)
        for sidecar in sidecars:
            sidecar.stop()
        orders_app.stop()
        shipping_app.stop()


def test_read_only_token_and_cross_site_guards(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    app = SubscriberApp([]).start()
    token = "dashboard-secret"
    pubsub = BROKERS["sqlite"]("pubsub", tmp_path, "", {})
    sidecar = start_sidecar(
        tmp_path / "app",
        app_id="guarded",
        resources={"pubsub.yaml": pubsub},
        env={"PILLION_RUN_DIR": str(run_dir), "DAPR_API_TOKEN": token},
    )
    dashboard, url = start_dashboard(tmp_path, run_dir, "--read-only", env={"DAPR_API_TOKEN": token})
    try:
        with httpx.Client(base_url=url, timeout=15) as client:
            assert client.get("/api/snapshot").status_code == 401
            assert client.get("/", headers={"host": "attacker.example:80"}).status_code == 403
            auth = {"dapr-api-token": token}
            snapshot = client.get("/api/snapshot?since=0&wait=1", headers=auth).json()
            assert snapshot["readOnly"] is True
            [shown] = eventually(lambda: client.get("/api/snapshot", headers=auth).json()["apps"] or None)
            # The dashboard passed the token on: the sidecar answered its metadata.
            assert shown["appId"] == "guarded" and shown["health"] == "ready"
            assert shown["components"][0]["type"] == "pubsub.sqlite"
            replay = f"/api/apps/{sidecar.proc.pid}/deadletters/pubsub/dead/replay"
            assert client.post(replay, headers=auth, json={"all": True}).status_code == 403  # no CSRF header
            refused = client.post(replay, headers={**auth, "x-pillion-dashboard": "1"}, json={"all": True})
            assert refused.status_code == 403 and refused.json()["errorCode"] == "ERR_DASHBOARD_READ_ONLY"
            listed = client.get(f"/api/apps/{sidecar.proc.pid}/deadletters/pubsub/dead", headers=auth)
            assert listed.status_code == 200 and listed.json()["messages"] == []
    finally:
        stop(dashboard)
        sidecar.stop()
        app.stop()


def test_remote_access_must_be_asked_for(tmp_path: Path) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "runtime", "dashboard", "--address", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 1 and "--allow-remote-access" in refused.stderr


def test_the_page_asks_for_the_token_and_read_only_disables_changes(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    run_dir = tmp_path / "run"
    token = "page-secret"
    app = SubscriberApp(
        [{"pubsubname": "pubsub", "topic": "orders", "route": "/orders", "deadLetterTopic": "orders-dead"}]
    ).start()
    sidecar = start_sidecar(
        tmp_path / "app",
        app_id="guarded",
        resources={"pubsub.yaml": BROKERS["sqlite"]("pubsub", tmp_path, "", {})},
        extra_args=["--app-port", str(app.port)],
        env={"PILLION_RUN_DIR": str(run_dir), "DAPR_API_TOKEN": token},
        wait_path="/v1.0/healthz/outbound",
    )
    dashboard, url = start_dashboard(tmp_path, run_dir, "--read-only", env={"DAPR_API_TOKEN": token})
    try:
        browser.get(url + "/")
        field = eventually(
            lambda: (
                browser.find_element(By.ID, "token-input").is_displayed()
                and browser.find_element(By.ID, "token-input")
            ),
            what="the token form",
        )
        assert browser.find_element(By.CSS_SELECTOR, "label[for='token-input']").text == "API token"
        field.send_keys(token, Keys.ENTER)
        eventually(lambda: "guarded" in text_of(browser, "#apps tbody"), 15, "the app after the token")
        assert "read-only" in text_of(browser, "#status")
        eventually(
            lambda: browser.find_elements(By.CSS_SELECTOR, "#subscriptions button"), what="the subscription"
        )
        browser.find_element(By.CSS_SELECTOR, "#subscriptions button").click()
        eventually(lambda: "read-only" in text_of(browser, "#dead-letters-note"), what="the read-only note")
        assert not browser.find_element(By.ID, "replay-all").is_enabled()
        assert not browser.find_element(By.ID, "purge-all").is_enabled()
        assert browser.find_element(By.ID, "refresh-letters").is_enabled()
    finally:
        stop(dashboard)
        sidecar.stop()
        app.stop()
