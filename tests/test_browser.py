"""The reports in a real browser: headless Chromium driven by Selenium through Debian's chromedriver
(nothing is downloaded at run time). Skipped, with the reason, where Chromium, its driver or Selenium
is missing; .ci/run installs them."""
from __future__ import annotations

import os
import shutil
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from common.report import ResultsReport
from common.test_cli import test_main as run_test_script
from conftest import generator_checkpoint, small_nets, sr_trainset, write_photos

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
except ImportError:  # pragma: no cover - the skip below says so
    webdriver = None

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    webdriver is None or not CHROMIUM or not DRIVER,
    reason="needs Selenium and Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")]


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # as root in a sandbox, and with nowhere to connect to: no background traffic at all
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def open_page(driver, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    deadline = time.time() + 20
    while driver.execute_script("return document.readyState") != "complete":
        assert time.time() < deadline, "the page did not finish loading"
        time.sleep(0.05)
    driver.get_log("browser")  # what came before this page is not its own


def console_errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def check_every_image_and_link_resolves(driver, page: Path) -> None:
    """Every <img> loads (lazy ones forced), every link points at a file beside the page."""
    driver.execute_script("document.querySelectorAll('img').forEach((i) => { i.loading = 'eager'; });"
                          "window.scrollTo(0, document.body.scrollHeight);")
    deadline = time.time() + 20
    while True:
        broken = driver.execute_script(
            "return [...document.images].filter((i) => i.getAttribute('src') && "
            "!(i.complete && i.naturalWidth > 0)).map((i) => i.getAttribute('src'));")
        if not broken:
            break
        assert time.time() < deadline, f"images that do not load: {broken[:5]}"
        time.sleep(0.1)
    hrefs = driver.execute_script("return [...document.links].map((a) => a.getAttribute('href'));")
    for href in hrefs:
        if href and not href.startswith("#"):
            target = page.parent / os.fsdecode(urllib.parse.unquote_to_bytes(href))
            assert target.is_file(), href


def test_the_test_report_sorts_slides_zooms_and_resolves(tmp_path, browser):
    generator_checkpoint(tmp_path / "g.pt", task="deraining")
    names = ["a", "b", "c", "d"]
    write_photos(tmp_path / "in", [f"{n}.png" for n in names], side=48, wider=8)  # not square
    write_photos(tmp_path / "gt", [f"{n}.png" for n in names], side=48, seed=1, wider=8)
    run_test_script("deraining", ["--checkpoint", str(tmp_path / "g.pt"), "--input", str(tmp_path / "in"), "--gt",
                                  str(tmp_path / "gt"), "--save", str(tmp_path / "res"), "--device", "cpu",
                                  "--no-lpips"])
    page = tmp_path / "res" / "report.html"
    open_page(browser, page)
    assert console_errors(browser) == []
    rows = lambda: [r.find_elements(By.TAG_NAME, "td")[1].text for r in browser.find_elements(By.CSS_SELECTOR, "#images tbody tr")]
    gains = lambda: [float(r.find_elements(By.TAG_NAME, "td")[-1].text) for r in
                     browser.find_elements(By.CSS_SELECTOR, "#images tbody tr")]
    assert sorted(rows()) == names and gains() == sorted(gains())  # worst gain first
    # sorting by a column reorders the rows, and a second click reverses them
    header = next(th for th in browser.find_elements(By.CSS_SELECTOR, "#images th") if th.text == "image")
    header.click()
    assert rows() == names
    header.click()
    assert rows() == names[::-1]
    # the slider moves the divider and the clip of the left image
    before = browser.execute_script("return [document.getElementById('left-img').style.clipPath, "
                                    "document.getElementById('divider').style.left];")
    browser.execute_script("const s = document.getElementById('slider'); s.value = 20; "
                           "s.dispatchEvent(new Event('input'));")
    after = browser.execute_script("return [document.getElementById('left-img').style.clipPath, "
                                   "document.getElementById('divider').style.left];")
    assert before[0] != after[0] and before[1] != after[1] and "80%" in after[0]
    # zoom: both images in one transformed layer, so they stay on the same pixels; + doubles its scale
    def scale():
        transform = browser.execute_script("return document.getElementById('layer').style.transform;")
        return float(transform.split("scale(")[1].rstrip(")"))

    fitted = scale()
    assert browser.find_element(By.ID, "zoom-level").text == "fit"
    browser.find_element(By.ID, "zoom-in").click()
    assert browser.find_element(By.ID, "zoom-level").text.endswith("%")
    assert scale() == pytest.approx(2 * fitted)
    # another row, and the ground-truth pair
    browser.find_elements(By.CSS_SELECTOR, "#images tbody tr")[1].click()
    browser.execute_script("const p = document.getElementById('pair'); p.value = 'restored|gt'; "
                           "p.dispatchEvent(new Event('change'));")
    assert browser.find_element(By.ID, "right-label").text == "ground truth"
    check_every_image_and_link_resolves(browser, page)
    assert console_errors(browser) == []
    browser.save_screenshot(str(tmp_path / "test-report.png"))
    assert (tmp_path / "test-report.png").stat().st_size > 10_000


def test_a_report_of_500_images_opens_in_about_a_second(tmp_path, browser):
    report = ResultsReport(tmp_path, "500 images")
    rng = np.random.default_rng(0)
    for i in range(500):
        img = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        report.add({"name": f"img{i:03d}", "psnr": 20 + rng.random(), "ssim": 0.5, "lpips": None,
                    "input_psnr": 20.0, "input_ssim": 0.5, "input_lpips": None}, img, img, img)
    report.write([("data", "500 generated images")], {"psnr": 20.5, "ssim": 0.5, "input_psnr": 20.0, "input_ssim": 0.5})
    open_page(browser, tmp_path / "report.html")
    timing = browser.execute_script("const t = performance.getEntriesByType('navigation')[0]; "
                                    "return t.domComplete - t.startTime;")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#images tbody tr")) == 500
    assert timing < 2000, f"{timing:.0f} ms to open"  # about a second, with room for a loaded machine
    assert console_errors(browser) == []


def test_the_training_report_shows_curves_and_samples(tmp_path, browser):
    from common.runs import train_main

    sr_trainset(tmp_path / "data" / "a.h5", n=4)
    write_photos(tmp_path / "val" / "in", ["a.png"], side=16)
    write_photos(tmp_path / "val" / "gt", ["a.png"], side=64)
    train_main("sr", ["--trainset", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--name", "r",
                      "--sigma", "10", "1", "--batchSize", "2", "--max-steps", "4", "--val-input",
                      str(tmp_path / "val" / "in"), "--val-gt", str(tmp_path / "val" / "gt"), "--val-steps", "2",
                      *small_nets(), "--device", "cpu"])
    page = tmp_path / "out" / "sr" / "r" / "report.html"
    open_page(browser, page)
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "sigma-10" in text and "sigma-1" in text and "Curves" in text
    check_every_image_and_link_resolves(browser, page)
    assert console_errors(browser) == []
    browser.save_screenshot(str(tmp_path / "training-report.png"))
