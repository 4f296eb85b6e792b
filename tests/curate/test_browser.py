"""The labelling page in a real browser (headless Chromium driven by Selenium): open it, search by
example, label items with keys and buttons, kill the server, start it again: the labels are there."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def start_server(emb: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "multissl", "curate", str(emb), "--port", "0",
                             "--classes", "zero,one,two"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    assert " at http://127.0.0.1:" in line, line + proc.stderr.read()[-2000:]
    return proc, line.rsplit(" at ", 1)[1].strip()


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and DRIVER):
        pytest.fail("chromium and chromium-driver are needed (make sysdeps installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1280,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def test_label_in_the_browser_and_survive_a_kill(tmp_path, browser, vision_checkpoint, digit_folders):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from multissl.curate.embed import embed

    emb = embed(vision_checkpoint, str(digit_folders), tmp_path / "emb")
    first = sorted(digit_folders.rglob("*.png"))[0]
    wait = WebDriverWait(browser, 30)
    server, url = start_server(emb)
    try:
        browser.get(url)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert browser.find_element(By.ID, "total").text == "150"
        browser.find_element(By.ID, "query").send_keys(str(first))
        browser.find_element(By.ID, "search-btn").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 20)
        cards = browser.find_elements(By.CSS_SELECTOR, ".card")
        assert str(first) not in [c.get_attribute("data-id") for c in cards]  # the example itself is left out
        wait.until(lambda d: d.execute_script(  # thumbnails decoded by the browser
            "return [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)"))
        ids = [c.get_attribute("data-id") for c in cards]

        cards[0].click()
        keys = ActionChains(browser)
        keys.send_keys("1").perform()  # first card: zero; focus moves on
        wait.until(lambda d: d.find_element(By.ID, "count").text == "1")
        keys.send_keys("2").perform()  # second card: one
        wait.until(lambda d: d.find_element(By.ID, "count").text == "2")
        keys.send_keys(Keys.ARROW_RIGHT).send_keys("3").perform()  # fourth card: two
        wait.until(lambda d: d.find_element(By.ID, "count").text == "3")
        sixth = browser.find_elements(By.CSS_SELECTOR, ".card")[5]
        next(b for b in sixth.find_elements(By.CSS_SELECTOR, ".label-btn") if b.text == "one").click()
        wait.until(lambda d: d.find_element(By.ID, "count").text == "4")
        given = {ids[0]: "zero", ids[1]: "one", ids[3]: "two", ids[5]: "one"}
        with open(emb / "labels.csv") as fh:  # on disk as soon as given
            assert {r["id"]: r["label"] for r in csv.DictReader(fh)} == given

        browser.find_element(By.ID, "next-btn").click()  # a next batch from k-center greedy, labelled ones left out
        wait.until(lambda d: "next batch" in d.find_element(By.ID, "status").text)
        batch = [c.get_attribute("data-id") for c in browser.find_elements(By.CSS_SELECTOR, ".card")]
        assert len(batch) == 12 and not set(batch) & set(given)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()

    server, url = start_server(emb)
    try:
        browser.get(url)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert browser.find_element(By.ID, "count").text == "4"
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 4)  # the labelled items are shown
        shown = {c.get_attribute("data-id"): c.find_element(By.CSS_SELECTOR, ".label").text
                 for c in browser.find_elements(By.CSS_SELECTOR, ".card")}
        assert shown == given
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
