"""The web viewer in a real headless browser: Debian's chromium driven by Selenium.

Loads ``/`` from a real uvicorn, uploads a CT DICOM (a compressed one the browser itself could not
decode), waits for both images and the metrics, checks the canvases show an image, changes the
window, and saves a screenshot (``DENOISE_SCREENSHOT`` names a copy to keep, e.g.
docs/web-viewer.png). Skips when chromium or chromedriver is missing, unless
``CI_REQUIRE_BROWSER=1`` (set by .ci/run), which makes a missing browser a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.e2e.test_uvicorn import models_to_serve
from tests.files import png_bytes
from tests.uvicorn_server import uvicorn_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1400",
)


def browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} not installed (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    missing = browser_missing()
    if missing:
        if os.environ.get("CI_REQUIRE_BROWSER") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with uvicorn_server(
        models_to_serve(tmp_path_factory), tmp_path_factory.mktemp("web") / "server.log"
    ) as url:
        yield url


CANVAS_STATS = """
const canvas = document.getElementById(arguments[0]);
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let sum = 0, sq = 0, n = data.length / 4;
for (let i = 0; i < data.length; i += 4) { sum += data[i]; sq += data[i] * data[i]; }
const mean = sum / n;
return [canvas.width, canvas.height, mean, Math.sqrt(sq / n - mean * mean)];
"""


def test_upload_a_dicom_and_see_both_images_and_the_metrics(
    browser: object, base_url: str, tmp_path: Path
) -> None:
    driver = browser  # type: ignore[assignment]
    driver.get(base_url + "/")  # type: ignore[attr-defined]
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: "model(s)" in d.find_element(By.ID, "server-status").text)

    fixture = get_testdata_file("693_J2KI.dcm")  # CT, JPEG 2000, window 40 / 100 in its header
    assert fixture is not None
    driver.find_element(By.ID, "file-input").send_keys(fixture)  # type: ignore[attr-defined]
    wait.until(lambda d: d.find_element(By.ID, "denoised-canvas").get_attribute("data-rendered") == "true")

    for canvas in ("original-canvas", "denoised-canvas"):
        width, height, mean, spread = driver.execute_script(CANVAS_STATS, canvas)  # type: ignore[attr-defined]
        assert (width, height) == (512, 512)
        assert 5 < mean < 250 and spread > 5, (canvas, mean, spread)  # an image, not a blank canvas
    metrics = driver.find_element(By.ID, "metrics").text  # type: ignore[attr-defined]
    assert "noise σ, wavelet MAD (HU)" in metrics and "noise reduction (dB)" in metrics
    details = driver.find_element(By.ID, "details").text  # type: ignore[attr-defined]
    assert "model ct-" in details and "ExecutionProvider" in details  # tiny or trained models
    assert driver.find_element(By.ID, "window-center").get_attribute("value") == "40"  # type: ignore[attr-defined]
    link = driver.find_element(By.ID, "download")  # type: ignore[attr-defined]
    assert (
        link.get_attribute("href").startswith("blob:")
        and link.get_attribute("download") == "693_J2KI-denoised.dcm"
    )

    Select(driver.find_element(By.ID, "window-preset")).select_by_index(1)  # type: ignore[attr-defined]
    assert driver.find_element(By.ID, "window-width").get_attribute("value") == "400"  # type: ignore[attr-defined]
    screenshot = tmp_path / "web-viewer.png"
    assert driver.save_screenshot(str(screenshot))  # type: ignore[attr-defined]
    keep = os.environ.get("DENOISE_SCREENSHOT")
    if keep:
        shutil.copyfile(screenshot, keep)

    # The default models take a noise level: the estimate is shown, and the strength control works.
    assert "noise level estimated" in details and "(strength 1)" in details
    driver.execute_script(  # type: ignore[attr-defined]
        "const s = document.getElementById('strength'); s.value = '2'; s.dispatchEvent(new Event('input'));")
    assert driver.find_element(By.ID, "strength-value").text == "2.00"  # type: ignore[attr-defined]
    driver.execute_script("document.getElementById('denoised-canvas').removeAttribute('data-rendered');")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "denoise-button").click()  # type: ignore[attr-defined]
    wait.until(lambda d: d.find_element(By.ID, "denoised-canvas").get_attribute("data-rendered") == "true")
    assert "(strength 2)" in driver.find_element(By.ID, "details").text  # type: ignore[attr-defined]

    Select(driver.find_element(By.ID, "view-mode")).select_by_value("slider")  # type: ignore[attr-defined]
    assert driver.find_element(By.ID, "slider").is_displayed()  # type: ignore[attr-defined]
    assert not driver.find_element(By.ID, "denoised-canvas").is_displayed()  # type: ignore[attr-defined]


def test_a_png_without_modality_shows_the_services_error(
    browser: object, base_url: str, tmp_path: Path
) -> None:
    driver = browser  # type: ignore[assignment]
    driver.get(base_url + "/")  # type: ignore[attr-defined]
    png = tmp_path / "slice.png"
    png.write_bytes(png_bytes(np.full((32, 32), 1000, np.uint16)))
    driver.find_element(By.ID, "file-input").send_keys(str(png))  # type: ignore[attr-defined]
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "modality_required" in driver.find_element(By.ID, "error").text  # type: ignore[attr-defined]
