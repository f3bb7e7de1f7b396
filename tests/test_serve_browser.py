"""The web page of ``mar serve`` in a real browser: Debian's chromium driven by Playwright
uploads a real video and waits for the top-5, the masked-token picture and the
reconstruction; then asks for a timeline (window/stride) and reads its table. A missing
browser fails the test with how to install it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import MODEL
from videos import REAL

from mar import create_model
from mar.models.io import save_model

spec = importlib.util.spec_from_file_location(
    "bench_serve", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_serve.py")
bench_serve = importlib.util.module_from_spec(spec)
sys.modules["bench_serve"] = bench_serve
spec.loader.exec_module(bench_serve)

CHROMIUM = os.environ.get("MAR_CHROMIUM", "/usr/bin/chromium")
INSTALL = ("install it with `sudo apt-get install -y chromium chromium-driver` (Debian/"
           "Ubuntu) and `pip install -e \".[test]\"` (Playwright), or point MAR_CHROMIUM at "
           "a Chromium binary")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
KWARGS = MODEL


def browser_or_fail():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the browser test needs Playwright: {INSTALL}")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.fail(f"no Chromium at {CHROMIUM}: {INSTALL}")
    return sync_playwright


def test_the_page_uploads_a_video_and_shows_the_prediction(tmp_path):
    sync_playwright = browser_or_fail()
    torch.manual_seed(0)
    model = save_model(create_model(**KWARGS), KWARGS, tmp_path / "mar",
                       masking={"name": "cell_running", "ratio": 0.5})
    names = ["pushing something", "pulling something", "turning something",
             "dropping something", "lifting something", "tearing something"]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    screenshot = tmp_path / "serve_page.png"
    with bench_serve.ServerProcess(model, "--class-names", str(tmp_path / "classes.txt")) as s, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1100})
            page.goto(s.url + "/")
            page.wait_for_function("document.getElementById('model').textContent"
                                   ".includes('GFLOPs')", timeout=60_000)
            page.set_input_files("#video", str(REAL / "bigbuckbunny.mp4"))
            page.click("#go")
            page.wait_for_selector("#result:not([hidden])", timeout=120_000)
            rows = page.locator("#top tr")
            assert rows.count() == 5
            first = rows.nth(0).inner_text()
            assert any(n in first for n in names) and "%" in first
            for image in ("#img-original", "#img-masked", "#img-recon"):
                assert page.eval_on_selector(image, "img => img.complete && "
                                             "img.naturalWidth > 0"), image
            assert page.is_visible("#recon-figure") and not page.is_visible("#no-recon")
            assert "cell_running 50%" in page.inner_text("#info")
            assert page.inner_text("#status") == "done: bigbuckbunny.mp4"
            assert not page.is_visible("#timeline")      # none asked for
            page.screenshot(path=str(screenshot), full_page=True)
            # a timeline: 2 s windows every second of the 5.3 s video
            page.fill("#window", "2")
            page.fill("#stride", "1")
            page.click("#go")
            page.wait_for_selector("#timeline:not([hidden])", timeout=120_000)
            windows = page.locator("#windows tr")
            assert windows.count() == 5
            assert windows.nth(0).inner_text().startswith("0.0\t2.0\t")
            assert any(n in windows.nth(4).inner_text() for n in names)
            assert "5 windows of 2 s every 1 s" in page.inner_text("#timeline-info")
            page.screenshot(path=str(tmp_path / "serve_timeline.png"), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    print(f"\nscreenshot: {screenshot}")
