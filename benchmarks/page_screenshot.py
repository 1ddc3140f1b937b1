"""The README's screenshot of python -m simcore.serve's page: the pretrained model on a free
port, headless Chromium (as tests/test_page.py drives it: Debian's chromium and
chromium-driver, selenium) asked for a digit, then a stroke on the pad completed as that digit.

    python benchmarks/page_screenshot.py --out docs/serve.png
"""
from __future__ import annotations

import argparse
import shutil
import sys
import threading

import paths  # noqa: F401  (simcore from the checkout when not installed)
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

import simcore
from simcore import serve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="serve.png")
    ap.add_argument("--digit", default="7")
    ap.add_argument("--seed", default="1")
    args = ap.parse_args(argv)
    app = serve.App(simcore.SIM.pretrained(), port=0, quiet=True)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,640",
                "--force-color-profile=srgb", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        driver.get(app.url)
        Select(driver.find_element(By.ID, "digit")).select_by_value(args.digit)
        driver.find_element(By.ID, "seed").send_keys(args.seed)
        driver.find_element(By.ID, "draw").click()
        WebDriverWait(driver, 120).until(lambda d: d.execute_script("return document.body.dataset.drawn"))
        pad = driver.find_element(By.ID, "pad")  # 224 x 224 on screen; the top of a 7: a bar, then its stem
        ActionChains(driver).move_to_element(pad).move_by_offset(-60, -75).click_and_hold() \
            .move_by_offset(60, -5).move_by_offset(55, 0).move_by_offset(-25, 45).move_by_offset(-15, 40) \
            .release().perform()
        driver.find_element(By.ID, "complete").click()
        WebDriverWait(driver, 120).until(lambda d: d.execute_script("return document.body.dataset.completed"))
        driver.save_screenshot(args.out)
    finally:
        driver.quit()
        app.shutdown()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
