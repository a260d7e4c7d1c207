"""The dashboard in headless Chromium: it shows the live state, draws its charts, and draws the
artifact's memory-quality curve with the current point (or says that it is not measured).

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; skips (and
says why) where they are missing.  ``.ci/run`` installs them.
"""

from __future__ import annotations

import shutil
import time

import pytest
from serve.helpers import running, wait_for

MODEL = "tiny-serve.bstk"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1100")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="the dashboard test needs selenium (dev extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("the dashboard test needs headless Chromium: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    session.set_page_load_timeout(30)
    yield session
    session.quit()


def _open(browser, srv, updates: int = 2):
    browser.get(srv.base + "/dashboard")
    status = browser.find_element("id", "status")
    assert wait_for(lambda: int(status.get_attribute("data-updates") or 0) >= updates, timeout=20), status.text
    return status


def _text(browser, element_id: str) -> str:
    return browser.find_element("id", element_id).text


def _drawn_pixels(browser, canvas_id: str, rgb: tuple[int, int, int]) -> int:
    """Pixels of ``canvas_id`` within a small distance of ``rgb``."""
    return browser.execute_script("""
        const c = document.getElementById(arguments[0]), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4)
          if (d[i + 3] > 200 && Math.abs(d[i] - arguments[1]) + Math.abs(d[i + 1] - arguments[2]) + Math.abs(d[i + 2] - arguments[3]) < 40) n++;
        return n;""", canvas_id, *rgb)


BLUE, RED, ORANGE = (0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28), (0xFF, 0x7F, 0x0E)


def _screenshot_has(path, rect, rgb) -> bool:
    import numpy as np
    from PIL import Image

    image = Image.open(path).convert("RGB")
    box = np.asarray(image.crop((rect["x"], rect["y"], rect["x"] + rect["width"], rect["y"] + rect["height"])), dtype=int)
    return bool((np.abs(box - np.array(rgb)).sum(-1) < 40).any())


def test_dashboard_shows_live_memory_and_says_the_curve_is_not_measured(browser, serve_artifact, tmp_path):
    with running(serve_artifact) as srv:
        for prompt in ("the cat", "a dog ran"):
            assert srv.request("POST", "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 20})[0] == 200
        _open(browser, srv, updates=3)
        state = srv.request("GET", "/health")[2]
        assert _text(browser, "model") == MODEL
        assert _text(browser, "bits") == f"{state['bits_per_param']:.2f}"
        assert _text(browser, "weights") == f"{state['weight_resident_bytes'] / 1e3:.1f} kB"
        assert "not measured" in _text(browser, "curvenote")
        assert browser.find_element("id", "curvenote").get_attribute("data-measured") == "0"
        assert _drawn_pixels(browser, "memory", BLUE) > 50 and _drawn_pixels(browser, "bitschart", ORANGE) > 50
        assert _drawn_pixels(browser, "curve", RED) > 20  # the current point on bits/param vs memory

        engine = srv.server.engine
        srv.admin_memory(engine.weights.floor + 8000)  # shed blocks: the page follows
        shrunk = srv.request("GET", "/health")[2]
        assert shrunk["bits_per_param"] < state["bits_per_param"]
        assert wait_for(lambda: _text(browser, "bits") == f"{shrunk['bits_per_param']:.2f}", timeout=10)
        assert wait_for(lambda: int(_text(browser, "resizes").split("/")[1]) >= 1, timeout=10)  # grow / shrink
        time.sleep(1.5)  # a few more points on the charts
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        memory_rect = browser.find_element("id", "memory").rect
        assert _screenshot_has(shot, memory_rect, BLUE) and _screenshot_has(shot, memory_rect, RED)


def test_dashboard_draws_the_measured_curve_with_the_current_point(browser, serve_artifact, tmp_path):
    from bitstack.evaluation.curve import CurvePoint, write_curve

    points = [CurvePoint(label="tiny", memory_bytes=m, ppl=p, bits_per_param=b)
              for m, p, b in ((41520, 80.0, 1.0), (47000, 40.0, 2.0), (52000, 30.0, 3.0), (57072, 25.0, 4.0))]
    paths = write_curve({"tiny": points}, tmp_path / "tiny-serve.bstk-curve", base_bytes=30000, params=20000)
    with running(serve_artifact, curve=str(paths["json"])) as srv:
        _open(browser, srv)
        note = browser.find_element("id", "curvenote")
        assert note.get_attribute("data-measured") == "1" and "curve:" in note.text
        bits = srv.request("GET", "/health")[2]["bits_per_param"]
        assert f"now {bits:.2f} bits/param" in note.text and "ppl ≈ 25.00" in note.text
        assert _drawn_pixels(browser, "curve", BLUE) > 50 and _drawn_pixels(browser, "curve", RED) > 20
        shot = tmp_path / "curve.png"
        browser.save_screenshot(str(shot))
        assert _screenshot_has(shot, browser.find_element("id", "curve").rect, RED)
