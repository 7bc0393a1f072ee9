"""What people see after the demo, in a real browser: headless Chromium on the demo's MLflow UI.

The demo flow runs once per session (``demo_flow``, tests/fixtures/demo.py): v1 trained and
deployed, v2 retrained on a good batch and deployed, v3 retrained on the bad batch and stopped
by the gate. Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium through
/usr/bin/chromedriver: no driver download) opens the registered-model page, a version page,
the compare-runs page and ``gate/report.html`` in MLflow's artifact viewer, the way an approver
would. Screenshots are saved to test-results/screenshots/ (CI artifacts).
"""
from __future__ import annotations

import contextlib
import getpass
import json
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests.helpers import REPO

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = REPO / "test-results" / "screenshots"
PAGE_WAIT = 90            # seconds a page may take to render (2 loaded cores)
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1600,1100")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("SKIPPED LOUDLY: /usr/bin/chromium or /usr/bin/chromedriver is missing; run "
                    "`make system-deps` (Debian packages chromium and chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(PAGE_WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def ui(demo_flow):
    """The demo's MLflow URL and what its REST API says (to compare the pages with)."""
    demo_flow.check()
    url = demo_flow.service_url("mlflow-server")
    model = demo_flow.model

    def api(endpoint: str, **params) -> dict:
        r = requests.get(f"{url}/api/2.0/mlflow/{endpoint}", params=params, timeout=30)
        r.raise_for_status()
        return r.json()

    versions = {int(v["version"]): v for v in api("model-versions/search", filter=f"name='{model}'")["model_versions"]}
    runs = {n: api("runs/get", run_id=v["run_id"])["run"] for n, v in versions.items()}
    return {"url": url, "model": model, "versions": versions, "runs": runs,
            "production": int(api("registered-models/alias", name=model,
                                  alias="production")["model_version"]["version"])}


def _wait(driver, what: str, condition, timeout: float = PAGE_WAIT):
    """Poll ``condition(driver)`` until it returns something truthy (bounded); fail with a screenshot."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = condition(driver)
        except Exception:   # noqa: BLE001 - the page is still rendering (stale / missing elements)
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            shot(driver, f"timeout-{what.replace(' ', '-')}")
            pytest.fail(f"the MLflow UI did not show {what} within {timeout:.0f}s ({driver.current_url})")
        time.sleep(0.5)


def shot(driver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    return path


def _open(driver, url: str, what: str, ready) -> object:
    driver.get(url)
    found = _wait(driver, what, ready)
    _close_assistant(driver)
    return found


def _close_assistant(driver) -> None:
    """MLflow 3 opens an assistant side panel on a fresh profile; close it so pages get the width."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        with contextlib.suppress(Exception):   # it went away by itself
            if button.is_displayed():
                button.click()


def _body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _version_row(driver, model: str, version: int):
    from selenium.webdriver.common.by import By

    link = f"#/models/{quote(model)}/versions/{version}"
    rows = driver.find_elements(By.XPATH, f"//div[@role='row'][.//a[@href='{link}']]")
    return rows[0] if rows else None


def test_production_alias_sits_on_the_deployed_version(browser, ui):
    model = ui["model"]
    assert ui["production"] == 2, "the demo deploys v2 (v3 is stopped by the gate)"
    _open(browser, f"{ui['url']}/#/models/{quote(model)}", "the versions table",
          lambda d: all(_version_row(d, model, v) for v in (1, 2, 3)))
    time.sleep(1)   # let the closed panel give the table its width
    shot(browser, "1-registered-model")
    aliases = {v: _version_row(browser, model, v).text for v in (1, 2, 3)}
    assert "@ production" in aliases[2], aliases[2]
    assert not any("@ production" in aliases[v] for v in (1, 3)), aliases
    assert "@ candidate" not in aliases[3]                   # the bad batch never became a candidate
    # The tags that matter are in the narrow Tags column, keys and values shown whole (not cut).
    row = _version_row(browser, model, 2)
    shown = {key: _tag_chip(browser, row, key) for key in
             ("validation_status", "deploy_status", "approved_by", "dataset")}
    assert shown == {"validation_status": ("validation_status: passed", False),
                     "deploy_status": ("deploy_status: deployed", False),
                     "approved_by": (f"approved_by: {getpass.getuser()}", False),
                     "dataset": ("dataset: digits", False)}, shown


_CHIP = """
const chip = arguments[0].querySelector('div[role=status][title="' + arguments[1] + '"]');
if (!chip) return null;
const parts = Array.from(chip.querySelectorAll('span[title]'));
return [parts.map(s => s.textContent).join(''), parts.some(s => s.scrollWidth > s.clientWidth + 1)];
"""


def _tag_chip(driver, row, key: str):
    """(text, cut) of tag ``key`` in a versions-table row: cut = its key or value ends in an ellipsis."""
    found = driver.execute_script(_CHIP, row, key)
    return None if found is None else (found[0], bool(found[1]))


def _description_line(description: str, label: str) -> str:
    """The description's ``**<label>:** ...`` line (registry.description's stable wording)."""
    lines = [line for line in description.splitlines() if line.startswith(f"**{label}:**")]
    assert lines, f"the description has no '{label}' line:\n{description}"
    return lines[0][len(label) + 5:].strip()


def test_version_page_names_the_approver_and_the_deploy_status(browser, ui):
    model, v = ui["model"], ui["production"]
    description = ui["versions"][v].get("description") or ""
    # The demo approves with --yes as the local user (no CircleCI): the approver is that user.
    approver = getpass.getuser()
    from registry.description import block

    assert block(description).splitlines()[0].startswith(f"**v{v}** · \\@production"), description
    assert _description_line(description, "Approved by").split()[0] == approver, description
    assert _description_line(description, "Deploy status").startswith("deployed"), description
    # The page renders it (Markdown: the bold markers are gone) with the alias and the source run.
    shown = [f"Approved by: {approver}", "Deploy status: deployed", f"Version {v}", "@ production"]
    _open(browser, f"{ui['url']}/#/models/{quote(model)}/versions/{v}", "the version page and its description",
          lambda d: all(t in _body(d) for t in shown))
    shot(browser, "2-model-version")
    assert ui["runs"][v]["info"]["run_name"] in _body(browser)   # "Source Run: retrain v1 + batch-001 (good)"


def _param_row(driver, name: str) -> list[str]:
    """The compare page's parameter row ``name``: one cell per run, in the page's run order."""
    from selenium.webdriver.common.by import By

    return [td.get_attribute("textContent").strip()
            for td in driver.find_elements(By.XPATH, f"//tr[th[normalize-space()='{name}']]/td")]


def test_compare_runs_tells_the_runs_apart_by_name(browser, ui):
    from selenium.webdriver.common.by import By

    runs = ui["runs"]
    names = {v: r["info"]["run_name"] for v, r in runs.items()}
    assert names == {1: "train digits", 2: "retrain v1 + batch-001 (good)", 3: "retrain v2 + batch-001 (bad)"}
    ids = json.dumps([runs[v]["info"]["run_id"] for v in (1, 2, 3)], separators=(",", ":"))
    exps = json.dumps(sorted({r["info"]["experiment_id"] for r in runs.values()}), separators=(",", ":"))
    _open(browser, f"{ui['url']}/#/compare-runs?runs={quote(ids)}&experiments={quote(exps)}",
          "the three run names and the parameter table",
          lambda d: all(n in _body(d) for n in names.values()) and _param_row(d, "incoming"))
    shot(browser, "3-compare-runs")
    # Params a base training does not have are empty in its column (not a made-up value).
    incoming = _param_row(browser, "incoming")
    assert incoming[0] == "" and incoming[1].endswith("good/batch-001.npz")
    assert incoming[2].endswith("bad/batch-001.npz")
    assert _param_row(browser, "retrained_from") == ["", "1", "2"]
    assert _param_row(browser, "dataset") == ["digits"] * 3
    cells = [td.get_attribute("textContent").strip() for td in browser.find_elements(By.TAG_NAME, "td")]
    assert cells and not [c for c in cells if c == "unknown"], "a table cell says unknown"


def test_gate_report_renders_its_chart_in_the_artifact_viewer(browser, ui):
    from selenium.webdriver.common.by import By

    v = 3   # the bad batch: the report the approver would never get to approve
    run = ui["runs"][v]["info"]
    url = f"{ui['url']}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}/artifacts/gate/report.html"
    frame = _open(browser, url, "the gate report's frame",
                  lambda d: d.find_elements(By.CSS_SELECTOR, "iframe"))[0]
    browser.switch_to.frame(frame)
    try:
        chart = _wait(browser, "the per-class chart", lambda d: d.find_element(By.ID, "per-class-chart"))
        verdict = browser.find_element(By.ID, "verdict").text
        bars = browser.find_elements(By.CSS_SELECTOR, "#per-class-chart rect.bar")
        sizes = [(b.get_attribute("class"), b.rect["height"]) for b in bars]
        chart_size = chart.size
        matrices = browser.find_elements(By.CSS_SELECTOR, "svg.confusion")
        matrix_sizes = [m.size for m in matrices]
        browser.execute_script("arguments[0].scrollIntoView()", chart)
    finally:
        browser.switch_to.default_content()
    shot(browser, "4-gate-report")
    assert verdict == "FAILED"
    assert chart_size["width"] > 300 and chart_size["height"] > 200, chart_size
    assert len(sizes) == 20 and {c for c, _ in sizes} == {"bar candidate", "bar production"}
    assert all(h > 0 for _, h in sizes), sizes           # every bar is drawn with a height
    assert len(matrix_sizes) == 2 and all(s["width"] > 200 for s in matrix_sizes), matrix_sizes
