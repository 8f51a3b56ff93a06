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

from common.cli.test import test_main as run_test_script
from common.evaluation.report import ResultsReport
from common.system.text import printable
from common.tasks import TASKS
from helpers import generator_checkpoint, small_nets, sr_trainset, write_photos

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
    from common.cli.train import train_main

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


# Names a user or a downloaded checkpoint may bring: the report's own old placeholders, markup that would
# make an element or run script, a comment opener that swallows what follows, quotes that end an
# attribute, and the line separators that end a JavaScript string. A file name cannot hold "/", so
# "</script>" comes in through a path: a folder "x<" holding "script>...".
HOSTILE_NAMES = ["{{DATA}}", "{{SCRIPT}}", "{{TITLE}}", "{{FACTS}}", "<img src=x onerror=window.pwned=1>",
                 "<!--<script>", "\"quote'", "x\" onload=\"window.pwned=2", "line\u2028para\u2029graph"]
HOSTILE_FIELD = "{{DATA}}</script><script>window.pwned=3</script><!--<img src=x onerror=window.pwned=4>"


def hostile_folder(root: Path, last: str) -> Path:
    return root / "{{DATA}}<" / f"script>{{{{TITLE}}}}<!--<img src=x onerror=window.pwned=5>{last}"


def page_state(driver) -> dict:
    """What the page holds, as the browser built it: anything a name made would show here."""
    return driver.execute_script("""
        const comments = document.createTreeWalker(document, NodeFilter.SHOW_COMMENT);
        let n = 0; while (comments.nextNode()) n++;
        const texts = (selector) => [...document.querySelectorAll(selector)].map((e) => e.textContent);
        return {pwned: window.pwned === undefined ? null : window.pwned, title: document.title,
                h1: texts("h1"), images: document.images.length, scripts: document.scripts.length,
                handlers: document.querySelectorAll("[onerror], [onload]").length, comments: n,
                elements: document.querySelectorAll("*").length,
                facts: [...document.querySelectorAll(".facts tr")].map((tr) => [tr.cells[0] ? tr.cells[0].textContent
                        : tr.querySelector("th").textContent, tr.querySelector("td").textContent]),
                rows: [...document.querySelectorAll("#images tbody tr")].map((tr) => tr.cells[1].textContent),
                alts: [...document.querySelectorAll("#images tbody img, figure img")].map((i) => i.alt),
                captions: texts("figcaption"), h3: texts("h3")};""")


def test_no_name_or_checkpoint_field_can_run_script_or_change_the_test_report(tmp_path, browser):
    checkpoint = generator_checkpoint(hostile_folder(tmp_path, "{{SCRIPT}}\u2028") / "g.pt", task=HOSTILE_FIELD,
                                      loss=HOSTILE_FIELD.replace("DATA", "SCRIPT"))
    inputs, gts = hostile_folder(tmp_path, "in"), hostile_folder(tmp_path, "gt")
    write_photos(inputs, [f"{n}.png" for n in HOSTILE_NAMES], side=16)
    write_photos(gts, [f"{n}.png" for n in HOSTILE_NAMES], side=16, seed=1)
    run_test_script("deraining", ["--checkpoint", str(checkpoint), "--input", str(inputs), "--gt", str(gts),
                                  "--save", str(tmp_path / "res"), "--device", "cpu", "--no-lpips", "--any-task"])
    page = tmp_path / "res" / "report.html"
    open_page(browser, page)
    state = page_state(browser)
    # as test.py names it; a name's line separators show as escapes, as on the terminal (common.system.text.printable)
    title = printable(f"{TASKS['deraining'].title}: {checkpoint}")
    names = sorted(printable(n) for n in HOSTILE_NAMES)
    assert state["pwned"] is None and state["handlers"] == 0 and state["comments"] == 0
    assert state["title"] == title and state["h1"] == [title]
    assert state["scripts"] == 2  # the data block and the page's own
    assert sorted(state["rows"]) == names and sorted(state["alts"]) == names
    assert state["images"] == len(HOSTILE_NAMES) + 2  # a thumbnail a row, the comparison's two sides
    facts = dict(state["facts"])
    assert facts["checkpoint"] == printable(checkpoint)
    assert facts["model"] == f"{HOSTILE_FIELD}, cost {HOSTILE_FIELD.replace('DATA', 'SCRIPT')}, sigma ?, step ?"
    assert facts["data"] == printable(f"{len(HOSTILE_NAMES)} image(s) from {inputs}, ground truth {gts}")
    assert browser.find_element(By.ID, "viewer-title").text.startswith("Comparison: ")
    check_every_image_and_link_resolves(browser, page)
    assert console_errors(browser) == []


def test_no_name_or_field_can_run_script_or_change_the_training_report(tmp_path, browser):
    from common.evaluation.report import write_training_report

    run_root = hostile_folder(tmp_path, "run")
    sigmas = ["sigma-10", "sigma-{{DATA}}<img src=x onerror=window.pwned=6>"]
    for sigma in sigmas:
        (run_root / sigma).mkdir(parents=True)
        (run_root / sigma / "metrics.jsonl").write_text(
            '{"kind": "val", "step": 2, "psnr": 20.0, "input_psnr": 19.0}\n'
            '{"kind": "val", "step": 4, "psnr": 21.0, "input_psnr": 19.0}\n')
        write_photos(run_root / sigma / "samples", [f"epoch-{n}.png" for n in HOSTILE_NAMES], side=16)
    title = f"Super-resolution training: {HOSTILE_FIELD}"
    facts = [("run", str(run_root)), ("data", HOSTILE_FIELD), ("{{FACTS}}<b>", "\"quote'")]
    page = write_training_report(run_root, title, facts)
    open_page(browser, page)
    state = page_state(browser)
    assert state["pwned"] is None and state["handlers"] == 0 and state["comments"] == 0
    assert state["title"] == title and state["h1"] == [title] and state["scripts"] == 0
    assert state["facts"][:-1] == [list(f) for f in facts] and state["facts"][-1][0] == "updated"
    assert state["h3"] == sorted(sigmas)
    samples = sorted(printable(f"epoch-{n}") for n in HOSTILE_NAMES) * len(sigmas)
    assert sorted(state["captions"]) == sorted(samples) and sorted(state["alts"]) == sorted(samples)
    assert state["images"] == 1 + len(samples)  # the curves and every sample
    check_every_image_and_link_resolves(browser, page)
    assert console_errors(browser) == []


def test_without_ground_truth_the_report_shows_the_no_reference_score_worst_change_first(tmp_path, browser):
    generator_checkpoint(tmp_path / "g.pt", task="deraining")
    names = ["a", "b", "c"]
    write_photos(tmp_path / "in", [f"{n}.png" for n in names], side=48, wider=8)
    write_photos(tmp_path / "clean", ["x.png", "y.png"], side=64, seed=3)
    run_test_script("deraining", ["--checkpoint", str(tmp_path / "g.pt"), "--input", str(tmp_path / "in"), "--clean",
                                  str(tmp_path / "clean"), "--save", str(tmp_path / "res"), "--device", "cpu"])
    page = tmp_path / "res" / "report.html"
    open_page(browser, page)
    assert console_errors(browser) == []
    means = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
             for tr in browser.find_elements(By.CSS_SELECTOR, "#means tr")[1:]]
    assert [row[0] for row in means] == ["no-reference score"] and all(float(v) > 0 for v in means[0][1:3])
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#images th")]
    assert headers[2:] == ["input no-reference score", "restored no-reference score", "score change"]
    changes = [float(tr.find_elements(By.TAG_NAME, "td")[-1].text)
               for tr in browser.find_elements(By.CSS_SELECTOR, "#images tbody tr")]
    assert len(changes) == 3 and changes == sorted(changes, reverse=True)  # the image made most unlike clean first
    assert "clean images in" in browser.find_element(By.TAG_NAME, "body").text  # what it was compared with
    check_every_image_and_link_resolves(browser, page)
