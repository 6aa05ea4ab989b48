"""The web viewer against a service with API keys, in the headless browser of tests/e2e/test_browser.py:
the 401 shows the key field, a wrong key is refused, the right one loads the models and denoises,
and the tab keeps it across a reload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.e2e.test_browser import browser  # noqa: F401  (the fixture: chromium, or a skip)
from tests.files import png_bytes
from tests.uvicorn_server import ServerFailed, uvicorn_server

KEY = "viewer-key-0123456789abc"


@pytest.fixture(scope="module")
def keyed_url(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        with uvicorn_server(
            models_dir, tmp_path_factory.mktemp("viewer") / "server.log", api_keys=KEY
        ) as url:
            yield url
    except ServerFailed as failure:
        pytest.fail(str(failure))


def enter_key(driver: object, key: str) -> None:
    field = driver.find_element(By.ID, "api-key")  # type: ignore[attr-defined]
    field.send_keys(key)
    field.submit()


def test_the_viewer_asks_for_a_key_and_uses_it(
    browser: object,  # noqa: F811
    keyed_url: str,
    tmp_path: Path,
) -> None:
    driver = browser
    driver.get(keyed_url + "/")  # type: ignore[attr-defined]
    driver.execute_script("sessionStorage.clear()")  # type: ignore[attr-defined]
    driver.refresh()  # type: ignore[attr-defined]
    wait = WebDriverWait(driver, 30)
    wait.until(lambda d: d.find_element(By.ID, "api-key-form").is_displayed())
    assert driver.find_element(By.ID, "server-status").text == "API key needed"  # type: ignore[attr-defined]
    assert "api_key_required" in driver.find_element(By.ID, "error").text  # type: ignore[attr-defined]

    enter_key(driver, "not-the-key-0123456789")
    wait.until(lambda d: "api_key_invalid" in d.find_element(By.ID, "error").text)
    assert driver.find_element(By.ID, "api-key-form").is_displayed()  # type: ignore[attr-defined]

    enter_key(driver, KEY)
    wait.until(lambda d: "model(s)" in d.find_element(By.ID, "server-status").text)
    assert not driver.find_element(By.ID, "api-key-form").is_displayed()  # type: ignore[attr-defined]

    png = tmp_path / "slice.png"
    rows, cols = np.mgrid[:64, :64]
    png.write_bytes(png_bytes((1000 + 200 * (rows > 32) + 5 * cols).astype(np.uint16)))
    Select(driver.find_element(By.ID, "modality")).select_by_value("ct")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "file-input").send_keys(str(png))  # type: ignore[attr-defined]
    wait.until(lambda d: d.find_element(By.ID, "denoised-canvas").get_attribute("data-rendered") == "true")
    assert not driver.find_element(By.ID, "error").is_displayed()  # type: ignore[attr-defined]

    driver.refresh()  # type: ignore[attr-defined]
    wait.until(lambda d: "model(s)" in d.find_element(By.ID, "server-status").text)  # the tab kept it
    assert not driver.find_element(By.ID, "api-key-form").is_displayed()  # type: ignore[attr-defined]
