"""The search page in a real headless Chromium (Debian's chromium + chromium-driver through
Selenium): type a query, submit, see ranked results with at least one image thumbnail that
really decoded (naturalWidth > 0), switch the modality filter and see only that modality. The
screenshot is kept under the test's tmp dir and copied to $UNIVL_FAST_ARTIFACTS when set."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import univl_fast
from tests.engine_helpers import PRECISION
from tests.serve_helpers import thread_server
from univl_fast.serve import ServeConfig, create_app

pytest_plugins = ["tests.engine_fixtures"]

# Results shown. The tiny random model ranks text docs first for most questions; 30 reaches
# the first image docs of several, so the unfiltered list mixes both modalities.
K = 30
WAIT_S = 30


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "needs Debian's chromium and chromium-driver (scripts/setup.sh installs them with "
            "apt-get; they could not be installed here)"
        )
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    binary, driver_path = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1100,1400",
    ):
        opts.add_argument(arg)
    service = webdriver.ChromeService(executable_path=driver_path)
    drv = webdriver.Chrome(options=opts, service=service)
    drv.set_page_load_timeout(WAIT_S)
    yield drv
    drv.quit()


def _artifact(path: Path) -> None:
    out = os.environ.get("UNIVL_FAST_ARTIFACTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / path.name)


def test_page_search_thumbnails_and_filter(
    browser, tiny_engine, flat_index, synth_tiny, queries, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    eng = univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION)
    # a question whose top K mixes both modalities, so the unfiltered page shows thumbnails
    mixed = [
        q
        for q, hits in zip(queries, eng.search(queries, k=K), strict=True)
        if {h.modality for h in hits} == {"text", "image"}
    ]
    assert mixed, "no test question has both modalities in its top results"
    query = mixed[0]
    with eng, thread_server(create_app(eng, ServeConfig(data_dir=str(synth_tiny)))) as url:
        browser.get(url + "/")
        browser.find_element(By.ID, "q").send_keys(query)
        k_box = browser.find_element(By.ID, "k")
        k_box.clear()
        k_box.send_keys(str(K))
        browser.find_element(By.ID, "go").click()
        wait = WebDriverWait(browser, WAIT_S)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li.hit")) == K)
        ranks = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .rank")]
        assert ranks == [str(i) for i in range(1, K + 1)]
        expect = [h.doc_id for h in eng.search([query], k=K)[0]]
        shown = [
            e.get_attribute("data-doc-id")
            for e in browser.find_elements(By.CSS_SELECTOR, "#results li.hit")
        ]
        assert set(shown) == set(expect)
        widths_js = (
            "return Array.from(document.querySelectorAll('#results img.thumb'))"
            ".map(i => i.complete ? i.naturalWidth : 0);"
        )
        wait.until(lambda d: any(w > 0 for w in d.execute_script(widths_js)))
        snippets = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .snippet")]
        assert all(snippets), "every hit shows its text or caption"
        first = tmp_path / "serve_page_all.png"
        assert browser.save_screenshot(str(first))
        _artifact(first)

        for modality in ("image", "text"):
            Select(browser.find_element(By.ID, "modality")).select_by_value(modality)
            wait.until(lambda d, m=modality: f"({m} only)" in d.find_element(By.ID, "status").text)
            items = browser.find_elements(By.CSS_SELECTOR, "#results li.hit")
            assert len(items) == K
            assert {e.get_attribute("data-modality") for e in items} == {modality}
            if modality == "image":
                wait.until(lambda d: len([w for w in d.execute_script(widths_js) if w > 0]) == K)
            else:
                assert browser.find_elements(By.CSS_SELECTOR, "#results img.thumb") == []
            shot = tmp_path / f"serve_page_{modality}.png"
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
            _artifact(shot)


def test_page_asks_for_the_api_key(browser, tiny_engine, flat_index, synth_tiny, queries):
    """With --api-key-file, the page's first search gets 401 and shows the key field; with the
    key typed in, results and thumbnails (fetched with the key) appear."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    eng = univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION)
    cfg = ServeConfig(data_dir=str(synth_tiny), api_key="page-key-123")
    with eng, thread_server(create_app(eng, cfg)) as url:
        browser.get(url + "/")
        browser.execute_script("localStorage.clear();")
        Select(browser.find_element(By.ID, "modality")).select_by_value("image")
        browser.find_element(By.ID, "q").send_keys(queries[0])
        browser.find_element(By.ID, "go").click()
        wait = WebDriverWait(browser, WAIT_S)
        key = browser.find_element(By.ID, "key")
        wait.until(lambda d: key.is_displayed())
        assert "API key" in browser.find_element(By.ID, "status").text
        assert browser.find_elements(By.CSS_SELECTOR, "#results li.hit") == []
        key.send_keys("page-key-123")
        browser.find_element(By.ID, "go").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li.hit")) == 10)
        wait.until(
            lambda d: (
                d.execute_script(
                    "return Array.from(document.querySelectorAll('#results img.thumb'))"
                    ".filter(i => i.complete && i.naturalWidth > 0).length;"
                )
                == 10
            )
        )


def test_api_docs_render_offline_from_the_package(browser, tiny_engine, flat_index, tmp_path):
    """/docs renders Swagger UI from the package's own files (no CDN): the title, the routes and
    the error schema show, and every resource the page loaded came from the service itself."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    eng = univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION, batching=False)
    with eng, thread_server(create_app(eng, ServeConfig(api_key="docs-key"))) as url:
        browser.get(url + "/docs")
        wait = WebDriverWait(browser, WAIT_S)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"))
        title = browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
        assert "univl-fast" in title
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")) >= 8)
        paths = {
            e.get_attribute("data-path")
            for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
        }
        assert {"/v1/embeddings", "/v1/search", "/v1/models", "/metrics"} <= paths, paths
        assert "ErrorResponse" in browser.find_element(By.TAG_NAME, "body").text
        loaded = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name);"
        )
        assert any(u.endswith("swagger-ui-bundle.js?v=5.35.0") for u in loaded), loaded
        assert all(u.startswith(url + "/") for u in loaded), loaded
        shot = tmp_path / "serve_docs.png"
        assert browser.save_screenshot(str(shot))
        _artifact(shot)
