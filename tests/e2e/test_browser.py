"""The UI path a new user walks, in a real headless Chromium: a Prefect server, the deployments of
prefect.yaml, a process worker and the MLflow UI, all on 127.0.0.1 in a temp project; the ctr
form filled (a section field and the model drop-down) on the small profile; the run's artifacts;
then the new model version's alias and tags in the MLflow UI. Screenshots on failure (and of the
tour when $SCENEREC_SCREENSHOTS names a folder)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.factories import REPO, free_port, make_project, stop_process_group

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1280,1400"]
BIN = Path(sys.executable).parent



def _wait_http(url: str, log: Path, seconds: int = 240) -> None:
    for _ in range(seconds):
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    pytest.fail(f"{url} did not answer in {seconds} s: " + log.read_text()[-2000:])


def _api(port: int, path: str, body: dict | None = None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api{path}", method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture
def stack(tmp_path):
    """Project, Prefect server + deployments + worker, MLflow UI; the small profile's data prepared."""
    if not (CHROMIUM.exists() and DRIVER.exists()):
        pytest.skip("Debian chromium + chromium-driver are not installed (.ci/run installs them)")
    root = make_project(tmp_path / "proj")
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")  # with its comments: the form's descriptions
    for name in ("flows", "params"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "prefect.yaml", root / "prefect.yaml")
    port, mport = free_port(), free_port()
    with open(root / "params" / "small.yaml", "a") as f:
        f.write(f"\ntracking:\n  ui_url: http://127.0.0.1:{mport}\n")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect_home"), "PATH": f"{BIN}:{os.environ['PATH']}",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_URL": f"http://127.0.0.1:{port}", "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    for k in ("PREFECT__TEST_MODE", "PREFECT_TESTING_TEST_MODE", "MLFLOW_TRACKING_URI", "SCENEREC_PARAMS"):
        env.pop(k, None)
    procs = []

    def start(name, *cmd):
        log = open(tmp_path / f"{name}.log", "w")
        procs.append(subprocess.Popen(list(cmd), cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        return procs[-1]

    def run(*cmd, timeout=600):
        p = subprocess.run(list(cmd), cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        assert p.returncode == 0, f"{' '.join(cmd)}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        return p.stdout

    try:
        start("server", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port))
        start("mlflow", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(mport), "--workers", "1",
              "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}")
        _wait_http(f"http://127.0.0.1:{port}/api/health", tmp_path / "server.log")
        # The tour's first three flows, run as a user would before opening the ctr form.
        prep = start("prep", sys.executable, "-c",
                     "from flows.ingest import generate, ingest; from flows.features import features; "
                     "p='params/small.yaml'; generate(params_file=p); ingest(params_file=p); features(params_file=p)")
        run("prefect", "work-pool", "create", "scenerec-local", "--type", "process")
        run("prefect", "--no-prompt", "deploy", "--all")
        start("worker", "prefect", "worker", "start", "--pool", "scenerec-local")
        assert prep.wait(timeout=600) == 0, (tmp_path / "prep.log").read_text()[-3000:]
        _wait_http(f"http://127.0.0.1:{mport}/health", tmp_path / "mlflow.log")
        yield {"root": root, "port": port, "mport": mport, "tmp": tmp_path}
    finally:
        for p in reversed(procs):
            stop_process_group(p)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in FLAGS + [f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # failed requests, for the report
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def _field(driver, name: str, tag: str):
    """The first ``tag`` element after the Prefect form label of property ``name``."""
    from selenium.webdriver.common.by import By

    xpath = (f"(//*[normalize-space(text())='{name} (Optional)' or normalize-space(text())='{name}']"
             f")[1]/following::{tag}[1]")
    return driver.find_element(By.XPATH, xpath)


def _until(fn, seconds: float, what: str):
    end = time.time() + seconds
    while time.time() < end:
        try:
            value = fn()
            if value:
                return value
        except Exception:  # noqa: BLE001 - the page is still rendering
            pass
        time.sleep(1)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def _page_text(driver, needle: str, seconds: float, what: str) -> str:
    """The page's text once it contains ``needle`` (the page is still rendering until then)."""
    from selenium.webdriver.common.by import By

    return _until(lambda: (t := driver.find_element(By.TAG_NAME, "body").text) and needle in t and t,
                  seconds, what)


def test_ctr_from_the_prefect_form_to_the_mlflow_registry(stack, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    port, mport, tmp = stack["port"], stack["mport"], stack["tmp"]
    shots = Path(os.environ["SCENEREC_SCREENSHOTS"]) if os.environ.get("SCENEREC_SCREENSHOTS") else None
    t0 = time.time()
    try:
        (dep,) = _api(port, "/deployments/filter", {"deployments": {"name": {"any_": ["ctr"]}}})
        # The form explains itself: no free-text model, no parent_run_id, typed fields with descriptions.
        props = dep["parameter_openapi_schema"]["properties"]
        assert set(props) == {"ctr", "params_file", "isolate"}
        browser.get(f"http://127.0.0.1:{port}/deployments/deployment/{dep['id']}/run")
        # The form is ready when the Model field's description (params.yaml's comment) is shown: on a
        # loaded machine the select rendered before it.
        body = _page_text(browser, "larr_cofars | larr_din", 60,
                          "the ctr form's Model description from params.yaml's comment")
        assert 'Property is type "None"' not in body
        model = _field(browser, "Model", "select")
        Select(model).select_by_visible_text("id_only")
        epochs = _field(browser, "Epochs", "input")
        expected = str(yaml.safe_load((REPO / "params.yaml").read_text())["ctr"]["epochs"])
        assert epochs.get_attribute("value") == expected, "the section shows params.yaml's value"
        epochs.send_keys(Keys.CONTROL, "a")
        epochs.send_keys("1")
        params_file = _field(browser, "params_file", "textarea")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", params_file)
        params_file.click()
        params_file.send_keys(Keys.CONTROL, "a")
        params_file.send_keys("params/small.yaml")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", model)
        if shots:
            shots.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(shots / "prefect-form.png"))
        for _ in range(3):  # a loaded server can fail the UI's first request ("Oops"): submit again
            submit = browser.find_element(By.XPATH, "//button[normalize-space()='Submit']")
            browser.execute_script("arguments[0].click();", submit)
            try:
                _until(lambda: "/run" not in browser.current_url.split("?")[0][-4:], 45, "the form to submit")
                break
            except AssertionError:
                continue
        # The UI goes back to the deployment's runs; the run it created is the deployment's only one.
        run_id = _until(lambda: _api(port, "/flow_runs/filter",
                                     {"deployments": {"id": {"any_": [dep["id"]]}}})[0]["id"], 120,
                        "the flow run the form created")
        run = _until(lambda: (r := _api(port, f"/flow_runs/{run_id}"))["state_type"] in
                     ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and r, 600, "the ctr run to finish")
        assert run["state_type"] == "COMPLETED", (tmp / "worker.log").read_text()[-4000:]
        assert run["parameters"]["ctr"]["model"] == "id_only"

        arts = _api(port, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
        by_key = {a["key"]: a for a in arts if a.get("key")}
        assert {"ctr-summary", "ctr-champion-vs-challenger"} <= set(by_key)
        summary = by_key["ctr-summary"]["data"]
        assert f"http://127.0.0.1:{mport}/#/experiments/" in summary and "/runs/" in summary
        assert "/#/models/scenerec-ctr-small-overrides/versions/1" in summary
        # The run page's tabs are <li class="p-tab"> that answer a real (not a scripted) click.
        browser.get(f"http://127.0.0.1:{port}/runs/flow-run/{run_id}")
        tab = _until(lambda: [t for t in browser.find_elements(
            By.XPATH, "//li[contains(@class, 'p-tab')][normalize-space(.)='Artifacts']") if t.is_displayed()],
            60, "the run page's Artifacts tab")[0]

        def artifacts_shown():
            if "tab=Artifacts" not in browser.current_url:
                tab.click()
            return "ctr-summary" in browser.find_element(By.TAG_NAME, "body").text

        _until(artifacts_shown, 60, "the artifacts tab")
        if shots:
            browser.save_screenshot(str(shots / "prefect-artifacts.png"))

        # MLflow: the version the form's run registered, its alias and its lineage tags.
        browser.get(f"http://127.0.0.1:{mport}/#/models/scenerec-ctr-small-overrides/versions/1")
        text = _page_text(browser, "architecture", 90, "the model version page")
        alias = "champion" if "`champion`" in summary else "challenger"
        assert alias in text, f"the version page shows the alias the run gave it ({alias})"
        assert "id_only" in text and run_id in text, "the version names its architecture and Prefect run"
        if shots:
            browser.save_screenshot(str(shots / "mlflow-version.png"))
        print(f"browser test: form to registry in {time.time() - t0:.0f} s")
    except BaseException:
        for entry in browser.get_log("performance"):
            m = json.loads(entry["message"])["message"]
            if m["method"] == "Network.responseReceived" and m["params"]["response"]["status"] >= 400:
                print("failed request:", m["params"]["response"]["status"], m["params"]["response"]["url"])
        browser.save_screenshot(str(tmp / "failure.png"))
        print(f"screenshot of the failure: {tmp / 'failure.png'}")
        raise
