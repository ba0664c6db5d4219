"""The status page in a real headless Chromium against a real local mesh (etcd, MLServer, its adapter, a pod):
the pod with its capacity bar and badges; a model registered through the gRPC API appears without a reload,
is shown held by the pod after ensureLoaded, a load that fails shows in recent failures; ids that are HTML
render as text; with every event stream taken the page falls back to polling and is live again once one is
free; a page left for another gives its stream back; no script errors."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from harness.cluster import LocalMesh
from protos import model_mesh_pb2 as mm
from tests.conftest import MeshClients, open_clients
from tests.support import ExampleModel, train_iris

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (deploy/local/setup.sh)",
    ),
]
POD = "pod-a"
WAIT_S = 30.0  # the longest the page may take to show anything (a load included)
HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_IDS = (HOSTILE, '"><svg onload=alert(2)>', "</script><script>window.__xss=3</script>")
MAX_STREAMS = 64  # mesh/status_page EventLimits.max_streams


@dataclass
class StatusMesh:
    clients: MeshClients
    base: str  # http://host:port of the pod's REST port
    iris: ExampleModel
    missing: Path

    def status_json(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/mesh/status", timeout=10) as answer:
            return json.loads(answer.read())


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StatusMesh]:
    work = tmp_path_factory.mktemp("status-page")
    iris = train_iris(work / "models" / "iris", "logistic")
    with LocalMesh(work / "mesh", pods=1) as local:
        clients = open_clients(local)
        try:
            assert local.pod is not None
            yield StatusMesh(clients, f"http://{local.pod.rest_address}", iris, work / "models" / "nowhere")
        finally:
            clients.channel.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a profile of its own; quit and the profile removed whatever happens."""
    with ExitStack() as cleanup:
        profile = tempfile.mkdtemp(prefix="status-page-chromium-")
        cleanup.callback(shutil.rmtree, profile, ignore_errors=True)
        options = Options()
        options.binary_location = str(CHROMIUM)
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)), options=options)
        cleanup.callback(driver.quit)
        driver.set_page_load_timeout(WAIT_S)
        yield driver


# --- reading the page ---------------------------------------------------------------------------------
# One script per look: the page redraws its sections on every snapshot, so elements found in one call may
# be gone by the next.


def texts(driver: WebDriver, selector: str) -> list[str]:
    found = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent)", selector
    )
    return list(found)


def attribute(driver: WebDriver, selector: str, name: str) -> str | None:
    found = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
        selector,
        name,
    )
    return None if found is None else str(found)


def css_string(value: str) -> str:
    """``value`` as a CSS string literal (for attribute selectors)."""
    return json.dumps(value)


def wait_for(
    driver: WebDriver, check: Callable[[WebDriver], Any], what: str, timeout_s: float = WAIT_S
) -> Any:
    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(check)
    except TimeoutException:
        body = driver.execute_script("return document.body ? document.body.innerText : ''")
        raise AssertionError(
            f"the page did not show {what} within {timeout_s} s; it shows:\n{body}"
        ) from None


def open_page(driver: WebDriver, mesh: StatusMesh, query: str = "") -> None:
    driver.get(f"{mesh.base}/status{query}")
    wait_for(driver, lambda d: texts(d, f'[data-pod="{POD}"] .pod-id') == [POD], f"pod {POD}")
    driver.execute_script("window.__loadedOnce = true;")  # gone if the page were reloaded


def not_reloaded(driver: WebDriver) -> bool:
    return bool(driver.execute_script("return window.__loadedOnce === true;"))


def pod_models(driver: WebDriver) -> list[str]:
    return texts(driver, f'[data-pod="{POD}"] ul.models li.model')


def model_row(driver: WebDriver, model_id: str) -> str | None:
    """The model's state in the models table (None while it is not listed)."""
    return attribute(driver, f"#model-list tr[data-model={css_string(model_id)}]", "data-status")


# --- the tests ----------------------------------------------------------------------------------------


def test_the_page_shows_the_pod_with_its_capacity_bar(mesh: StatusMesh, browser: webdriver.Chrome) -> None:
    open_page(browser, mesh)
    wait_for(browser, lambda d: attribute(d, "#connection", "data-state") == "live", "the event stream live")
    wait_for(browser, lambda d: texts(d, "#leader") == [POD], "the leader")
    pod = next(p for p in mesh.status_json()["pods"] if p["id"] == POD)
    bar = f'[data-pod="{POD}"] .bar'
    assert attribute(browser, bar, "role") == "progressbar"
    assert attribute(browser, bar, "aria-valuemax") == str(pod["capacity_bytes"]) != "0"
    wait_for(browser, lambda d: texts(d, f'[data-pod="{POD}"] .pool') == [pod["pool"] or "(default)"], "pool")
    width = browser.execute_script(
        "const f = document.querySelector(arguments[0] + ' .fill'); return f.style.width;", bar
    )
    assert width.endswith("%") and 0.0 <= float(width[:-1]) <= 100.0
    badges = texts(browser, f'[data-pod="{POD}"] .badge')
    assert {"alive", "leader", "runtime ready"} <= set(badges), badges
    assert texts(browser, "#count-registered") == [str(mesh.status_json()["models"]["registered"])]
    assert texts(browser, f'[data-pod="{POD}"] .usage')[0].endswith("%)")


def test_a_registered_model_appears_and_is_shown_held_once_loaded(
    mesh: StatusMesh, browser: WebDriver
) -> None:
    open_page(browser, mesh)
    before = int(texts(browser, "#count-registered")[0])
    mesh.clients.register("status-iris", mesh.iris.path)  # registered, not loaded
    wait_for(browser, lambda d: model_row(d, "status-iris") == "NOT_LOADED", "status-iris, not loaded")
    wait_for(browser, lambda d: texts(d, "#count-registered") == [str(before + 1)], "one more registered")
    assert "status-iris" not in pod_models(browser)

    mesh.clients.management.ensureLoaded(mm.EnsureLoadedRequest(modelId="status-iris", sync=False))
    seen_loading = False

    def held(driver: WebDriver) -> bool:
        nonlocal seen_loading
        seen_loading = seen_loading or "status-iris" in texts(driver, "#loads td.model")
        return "status-iris" in pod_models(driver)

    wait_for(browser, held, f"status-iris held by {POD}")
    wait_for(browser, lambda d: model_row(d, "status-iris") == "LOADED", "status-iris loaded")
    assert texts(browser, '#model-list tr[data-model="status-iris"] td.holders') == [POD]
    assert "status-iris" not in texts(browser, "#loads td.model")  # the load is done
    assert int(texts(browser, f'[data-pod="{POD}"] .model-count')[0]) >= 1
    assert not_reloaded(browser)
    print(f"the load was seen in progress: {seen_loading}")


def test_a_load_that_fails_shows_in_recent_failures(mesh: StatusMesh, browser: webdriver.Chrome) -> None:
    open_page(browser, mesh)
    request = mm.RegisterModelRequest(
        modelId="status-broken",
        modelInfo=mm.ModelInfo(type="sklearn", path=str(mesh.missing)),
        loadNow=True,
    )
    mesh.clients.management.registerModel(request)
    row = '#failures tr[data-model="status-broken"]'
    wait_for(browser, lambda d: texts(d, f"{row} td.pod") == [POD], "the failure of status-broken")
    assert str(mesh.missing) in texts(browser, f"{row} td.message")[0]
    wait_for(browser, lambda d: model_row(d, "status-broken") == "LOADING_FAILED", "status-broken failed")
    assert int(texts(browser, "#count-loading_failed")[0]) >= 1
    assert "status-broken" not in pod_models(browser)
    assert not_reloaded(browser)


def test_ids_that_are_html_render_as_text(mesh: StatusMesh, browser: webdriver.Chrome) -> None:
    open_page(browser, mesh)
    management = mesh.clients.management
    for model_id in HOSTILE_IDS:
        mesh.clients.register(model_id, mesh.iris.path, loadNow=True, sync=True)
    broken = HOSTILE + " broken"
    management.registerModel(
        mm.RegisterModelRequest(
            modelId=broken, modelInfo=mm.ModelInfo(type="sklearn", path=str(mesh.missing)), loadNow=True
        )
    )
    management.setVModel(mm.SetVModelRequest(vModelId=HOSTILE + " v", targetModelId=HOSTILE, owner=HOSTILE))

    wait_for(browser, lambda d: set(HOSTILE_IDS) <= set(pod_models(d)), "the hostile ids held by the pod")
    wait_for(browser, lambda d: broken in texts(d, "#failures td.model"), "the hostile failure")
    wait_for(browser, lambda d: texts(d, "#vmodels td.vmodel") == [HOSTILE + " v"], "the hostile vmodel")
    assert texts(browser, "#vmodels td.owner") == [HOSTILE]
    assert texts(browser, "#vmodels td.active") == [HOSTILE]
    wait_for(browser, lambda d: all(model_row(d, m) == "LOADED" for m in HOSTILE_IDS), "hostile rows")
    assert set(HOSTILE_IDS) <= set(texts(browser, "#model-list td.model"))
    # nothing of theirs became an element, ran, or was fetched
    assert browser.execute_script("return document.querySelectorAll('img, svg, main script').length") == 0
    assert browser.execute_script("return window.__xss === undefined")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 (the property is the check)
    assert not_reloaded(browser)


def test_with_every_event_stream_taken_the_page_polls(mesh: StatusMesh, browser: webdriver.Chrome) -> None:
    host, port = mesh.base.removeprefix("http://").split(":")
    browser.get("about:blank")  # the page's own stream goes (the pod notices within a check interval)
    streams: list[socket.socket] = []
    try:
        deadline = time.monotonic() + WAIT_S
        while len(streams) < MAX_STREAMS:
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"GET /status/events HTTP/1.1\r\nHost: x\r\n\r\n")
            if sock.recv(4096).startswith(b"HTTP/1.1 200"):
                streams.append(sock)
                continue
            sock.close()  # 503: a stream not yet noticed gone holds a slot
            assert time.monotonic() < deadline, f"only {len(streams)} event streams admitted"
            time.sleep(0.1)
        with urllib.request.urlopen(f"{mesh.base}/status", timeout=10) as page:
            assert page.status == 200  # the page itself still answers
        open_page(browser, mesh)  # its own stream is refused (503): it polls /mesh/status
        wait_for(browser, lambda d: attribute(d, "#connection", "data-state") == "polling", "polling")
        mesh.clients.register("status-polled", mesh.iris.path)
        wait_for(browser, lambda d: model_row(d, "status-polled") == "NOT_LOADED", "status-polled")
        for sock in streams:
            sock.close()
        # the page tries the stream again (after 5 s, then less and less often) and is live once more
        wait_for(browser, lambda d: attribute(d, "#connection", "data-state") == "live", "live again")
        assert not_reloaded(browser)
    finally:
        for sock in streams:
            sock.close()


def test_mode_poll_polls_from_the_start(mesh: StatusMesh, browser: webdriver.Chrome) -> None:
    open_page(browser, mesh, "?mode=poll")
    wait_for(browser, lambda d: attribute(d, "#connection", "data-state") == "polling", "polling")
    assert texts(browser, "#leader") == [POD]


def test_a_page_left_gives_its_stream_back_and_reconnects_when_shown_again(
    mesh: StatusMesh, browser: webdriver.Chrome
) -> None:
    open_page(browser, mesh)
    wait_for(browser, lambda d: attribute(d, "#connection", "data-state") == "live", "the event stream live")
    browser.get("about:blank")  # the page may live on in the back/forward cache: it closes its stream
    browser.back()
    wait_for(browser, lambda d: attribute(d, "#connection", "data-state") == "live", "live again")
    wait_for(browser, lambda d: texts(d, f'[data-pod="{POD}"] .pod-id') == [POD], f"pod {POD}")


def test_the_page_ran_without_script_errors(mesh: StatusMesh, browser: webdriver.Chrome) -> None:
    open_page(browser, mesh)
    wait_for(browser, lambda d: attribute(d, "#connection", "data-state") == "live", "the event stream live")
    errors = [
        entry
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and "/status/events" not in entry["message"]  # the refused stream
    ]
    assert errors == []
