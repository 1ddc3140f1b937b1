"""The page of python -m simcore.serve in a real browser: headless Chromium (Debian's
`chromium` and `chromium-driver`), driven by selenium (the `test` extra). It loads, draws
a requested digit row by row, takes a stroke on its pad and completes it; the canvases'
pixels are read back and compared with what the library draws for the same seed.

Skipped where there is no Chromium or no selenium, unless SIMCORE_REQUIRE_BROWSER=1 (CI):
then that is a failure."""
import os
import shutil
import threading

import numpy as np
import pytest

import simcore
from simcore import serve

REQUIRED = os.environ.get("SIMCORE_REQUIRE_BROWSER") == "1"


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    for tool in ("chromium", "chromedriver"):
        if not shutil.which(tool):
            return f"{tool} is not on PATH (apt-get install chromium chromium-driver)"
    return None


if _missing():
    if REQUIRED:
        raise RuntimeError(f"SIMCORE_REQUIRE_BROWSER=1 but {_missing()}")
    pytest.skip(_missing(), allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app():
    cfg = simcore.Config(d_model=16, d_hidden=24, n_layers=1, n_heads=2, image_size=28, pixel_above=True,
                         class_everywhere=True, null_class=True)
    app = serve.App(simcore.SIM(cfg, seed=0), port=0, quiet=True)
    thread = threading.Thread(target=app.serve_forever, daemon=True)
    thread.start()
    yield app
    app.shutdown()
    app.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900",
                "--disable-gpu", "--force-color-profile=srgb"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    yield driver
    driver.quit()


def canvas_pixels(driver, element_id: str) -> np.ndarray:
    """The gray values of a 28 x 28 canvas (its red channel: the page paints grays)."""
    rgba = driver.execute_script(
        "return Array.from(document.getElementById(arguments[0]).getContext('2d')"
        ".getImageData(0, 0, 28, 28).data)", element_id)
    rgba = np.array(rgba, np.uint8).reshape(28, 28, 4)
    assert (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 3] == 255).all()
    return rgba[..., 0]


def wait_for(driver, counter: str, value: str, seconds: float = 60):
    WebDriverWait(driver, seconds).until(
        lambda d: d.execute_script(f"return document.body.dataset.{counter} || ''") == value)


def test_the_page_draws_the_requested_digit_row_by_row(app, browser):
    browser.get(app.url)
    assert "simcore" in browser.title
    Select(browser.find_element(By.ID, "digit")).select_by_value("3")
    browser.find_element(By.ID, "seed").send_keys("5")
    browser.find_element(By.ID, "draw").click()
    wait_for(browser, "drawn", "1")
    want = app.model.generate([3], temperature=1.0, guidance=2.0, seed=5)[0]
    np.testing.assert_array_equal(canvas_pixels(browser, "out"), want)
    assert "done" in browser.find_element(By.ID, "status").text


def test_a_stroke_on_the_pad_is_completed_by_the_model(app, browser):
    browser.get(app.url)
    pad = browser.find_element(By.ID, "pad")  # 224 x 224 on screen: 8 screen pixels a pixel
    ActionChains(browser).move_to_element_with_offset(pad, -40, -90).click_and_hold() \
        .move_by_offset(40, 10).move_by_offset(40, 10).move_by_offset(-10, 40).release().perform()
    drawn = canvas_pixels(browser, "pad")
    assert drawn[:14].sum() > 255 * 10 and not drawn[14:].any()  # a stroke in the top half
    Select(browser.find_element(By.ID, "digit")).select_by_value("")  # no class: the model guesses
    browser.find_element(By.ID, "seed").send_keys("2")
    browser.find_element(By.ID, "complete").click()
    wait_for(browser, "completed", "1")
    got = canvas_pixels(browser, "out")
    np.testing.assert_array_equal(got[:14], drawn[:14])  # the given rows, exactly
    np.testing.assert_array_equal(got, app.model.complete(drawn[None], 14, None, seed=2)[0])
    assert "no class given" in browser.find_element(By.ID, "status").text
