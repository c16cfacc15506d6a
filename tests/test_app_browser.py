"""The app in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium.

Opens the page, types a Portuguese query, waits for the gallery, checks the first result against the Python API,
classifies an upload, sees a refused input as a message in the page, and saves screenshots
(`$RSMCLIP_SCREENSHOT_DIR`, else the test's temporary folder). `.ci/run` installs the browser; the tests skip,
saying why, only where no Chromium or chromedriver is installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from _app_fixtures import UCM_IMAGES, reference_probabilities

pytest.importorskip("gradio", reason='the web app needs Gradio: pip install "rsmclip[app]"')
pytest.importorskip("faiss", reason='archive search needs faiss: pip install "rsmclip[index]"')
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="the browser test needs selenium (pip install selenium)"
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from modeling_rsmclip.app.cli import serve  # noqa: E402
from modeling_rsmclip.app.service import AppService  # noqa: E402

WAIT_S = 90
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,2000",
)


def _find(*candidates: str) -> str | None:
    for name in candidates:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium with a fresh profile, driven through the system's chromedriver (never downloaded)."""
    chromium = _find(
        os.environ.get("RSMCLIP_CHROMIUM", ""), "chromium", "/usr/bin/chromium", "chromium-browser"
    )
    driver_path = _find(os.environ.get("RSMCLIP_CHROMEDRIVER", ""), "chromedriver", "/usr/bin/chromedriver")
    if not chromium or not driver_path:
        pytest.skip(
            "no headless browser installed: the browser test needs Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/run does it)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # An explicit driver path: Selenium Manager is never asked to download a browser or driver.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The default app (demo model, bundled sample index) on a free port of 127.0.0.1."""
    service = AppService.load(work_dir=tmp_path_factory.mktemp("work"))
    demo, url = serve(service, "127.0.0.1", block=False)
    try:
        yield service, url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = os.environ.get("RSMCLIP_SCREENSHOT_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _open(browser, url: str) -> None:
    browser.get(url)
    WebDriverWait(browser, WAIT_S).until(
        EC.element_to_be_clickable((By.CSS_SELECTOR, "#search-query textarea"))
    )


def _tab(browser, name: str) -> None:
    browser.find_element(By.XPATH, f"//button[@role='tab' and normalize-space()='{name}']").click()


def test_portuguese_search_in_the_browser(browser, app, screenshots):
    service, url = app
    query = "muitos aviões estacionados no aeroporto"
    _open(browser, url)
    box = browser.find_element(By.CSS_SELECTOR, "#search-query textarea")
    box.send_keys(query)
    browser.find_element(By.ID, "search-button").click()
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(
        EC.text_to_be_present_in_element((By.ID, "search-status"), "query language: pt"),
        message="the search status never said the query was Portuguese",
    )
    captions = wait.until(
        lambda d: (
            [
                e.text
                for e in d.find_elements(
                    By.CSS_SELECTOR, "#search-gallery .caption-label, #search-gallery figcaption"
                )
            ]
            or False
        ),
        message="no gallery captions appeared",
    )
    images = browser.find_elements(By.CSS_SELECTOR, "#search-gallery img")
    expected = service.index.search(query, top_k=8)
    assert len(images) >= len(expected) and len(captions) == len(expected)
    first = expected[0]
    assert captions[0].startswith("#1"), captions
    assert Path(first["path"]).name in captions[0] and f"{first['score']:.3f}" in captions[0], (
        captions,
        first,
    )
    assert all(img.get_attribute("naturalWidth") not in (None, "0") for img in images[: len(expected)])
    browser.save_screenshot(str(screenshots / "search-pt.png"))


def test_classify_an_upload_in_the_browser(browser, app, screenshots):
    service, url = app
    _open(browser, url)
    _tab(browser, "Classify")
    wait = WebDriverWait(browser, WAIT_S)
    upload = wait.until(
        EC.presence_of_element_located((By.CSS_SELECTOR, "#classify-upload input[type=file]"))
    )
    upload.send_keys(str(UCM_IMAGES / "191.jpg"))
    labels = browser.find_element(By.CSS_SELECTOR, "#classify-labels textarea, #classify-labels input")
    labels.clear()
    labels.send_keys("aviões, uma praia, uma floresta")
    # Wait for the upload to finish (its size shows) before classifying.
    wait.until(lambda d: "KB" in d.find_element(By.ID, "classify-upload").text)
    browser.find_element(By.ID, "classify-button").click()
    names = ["aviões", "uma praia", "uma floresta"]
    probs = reference_probabilities(service.model, service.processor, UCM_IMAGES / "191.jpg", names, "pt")
    heading = wait.until(
        EC.visibility_of_element_located(
            (By.CSS_SELECTOR, "#classify-probabilities [data-testid=label-output-value]")
        )
    )
    assert heading.text.strip() == names[int(probs.argmax())]
    # Each bar is a <meter> whose value is the probability the page received.
    meters = {
        m.get_attribute("aria-label"): float(m.get_attribute("value"))
        for m in browser.find_elements(By.CSS_SELECTOR, "#classify-probabilities meter")
    }
    assert meters == pytest.approx(dict(zip(names, probs.tolist())), abs=1e-5)
    browser.save_screenshot(str(screenshots / "classify.png"))


def test_bad_input_shows_a_message_and_the_page_keeps_working(browser, app, screenshots):
    _, url = app
    _open(browser, url)
    browser.find_element(By.ID, "search-button").click()  # empty query
    toast = WebDriverWait(browser, WAIT_S).until(
        EC.visibility_of_element_located((By.XPATH, "//*[contains(text(), 'type a query first')]"))
    )
    assert toast.is_displayed()
    browser.save_screenshot(str(screenshots / "empty-query.png"))
    box = browser.find_element(By.CSS_SELECTOR, "#search-query textarea")
    box.send_keys("ein Strand mit blauem Meer")
    browser.find_element(By.ID, "search-button").click()
    WebDriverWait(browser, WAIT_S).until(
        EC.text_to_be_present_in_element((By.ID, "search-status"), "query language: de")
    )
