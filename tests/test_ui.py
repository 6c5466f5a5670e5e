"""`hirm ui`: the work behind the page on a tiny random pipeline, and the page itself in a real browser."""

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hirm.errors import HirmError
from hirm.export import read_export_metadata
from hirm.patch import Patch
from hirm.ui import Workbench, parse_concepts


def test_parse_concepts():
    assert parse_concepts(" star, watercolor ,,star") == ["star", "watercolor"]
    with pytest.raises(HirmError, match="no concept to erase"):
        parse_concepts(" , ")


def test_erase_on_any_pipeline_shows_the_change_and_writes_the_patch(sd_folder, tmp_path):
    bench = Workbench(tmp_path)
    steps = []
    result = bench.erase(str(sd_folder), ["a red car"], method="hirm-r", neighbours=["a dog", "a tree"],
                         export="clip", progress=lambda fraction, text: steps.append(fraction))
    assert steps[0] == 0.0 and steps[-1] == 1.0 and steps == sorted(steps)
    assert result.before.size == result.after.size
    # 3 prompts naming the concept, then the 2 neighbours: the patch changes the first, the model's images change
    width = result.before.width // 5
    before, after = (np.asarray(im.convert("RGB")).astype(int) for im in (result.before, result.after))
    assert np.abs(before[:, : 3 * width] - after[:, : 3 * width]).mean() > 0
    patch_file, *exported = result.files
    assert Patch.load(patch_file).concepts == ["a red car"] and patch_file.parent == tmp_path
    assert [read_export_metadata(f)["export"]["format"] for f in exported] == ["clip"]
    assert "Locality probe" in result.scores and "UA" not in result.scores  # no judge outside MiniCanvas
    # the second erase reuses the loaded pipeline and numbers its files after the first
    again = bench.erase(str(sd_folder), ["a red car"], method="uce", neighbours=["a dog"], export="none")
    assert again.files[0].name.startswith("002-") and len(bench._pipes) == 1


def test_a_targeted_and_a_robust_erase(sd_folder, tmp_path):
    bench = Workbench(tmp_path)
    with pytest.raises(HirmError, match="needs a semantic target"):
        bench.erase(str(sd_folder), ["a red car"], method="hirm-s", neighbours=["a dog"])
    result = bench.erase(str(sd_folder), ["a red car"], method="hirm-s", target="a painting", neighbours=["a dog"])
    assert Patch.load(result.files[0]).config["target"] == "a painting"
    # a two-half patch: both halves drawn, the probe reads the text half
    result = bench.erase(str(sd_folder), ["a red car"], robust=True, neighbours=["a dog"])
    assert set(Patch.load(result.files[0]).components) == {"text_encoder", "unet"}
    assert "Locality probe" in result.scores


def test_bad_input_fails_before_any_work(tmp_path):
    bench = Workbench(tmp_path)
    with pytest.raises(HirmError, match="method 'nope'"):
        bench.erase("minicanvas", ["star"], method="nope")
    with pytest.raises(HirmError, match="export 'zip'"):
        bench.erase("minicanvas", ["star"], export="zip")
    with pytest.raises(HirmError, match="dog"):  # not a MiniCanvas concept: said before the model loads
        bench.erase("minicanvas", ["dog"])
    assert not bench._pipes and not any(tmp_path.iterdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ui_in_a_real_browser(tmp_path, chromium):
    """Start `hirm ui`, type a concept in headless Chromium, erase, and check the page's result."""
    from playwright.sync_api import sync_playwright  # the dev extra's
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = (tmp_path / "ui.log").open("w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    hirm = Path(sys.executable).with_name("hirm")
    server = subprocess.Popen([str(hirm), "ui", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        start = time.perf_counter()
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "ui.log").read_text()
                assert time.perf_counter() - start < 120, "the page did not come up"
                time.sleep(0.2)
        print(f"hirm ui served its page {time.perf_counter() - start:.1f} s after start")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.locator("#concepts textarea").fill("star")
            clicked = time.perf_counter()
            page.locator("#erase").click()
            page.locator("#files a").first.wait_for(timeout=600_000)
            print(f"erase, images and scores on the page {time.perf_counter() - clicked:.1f} s after the click")
            images = []
            for which in ("before", "after"):
                src = page.locator(f"#{which} img").get_attribute("src")
                images.append(np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")))
            assert images[0].shape == images[1].shape
            assert np.abs(images[0].astype(int) - images[1].astype(int)).mean() > 5  # stars drawn as something else
            scores = page.locator("#scores").inner_text()
            assert "UA (base)" in scores and "star" in scores and "Locality probe" in scores
            with page.expect_download() as download:
                page.locator("#files a").first.click()
            saved = tmp_path / download.value.suggested_filename
            download.value.save_as(saved)
            assert Patch.load(saved).concepts == ["star"]
            if os.environ.get("HIRM_UI_SCREENSHOT"):  # the README's picture
                page.screenshot(path=os.environ["HIRM_UI_SCREENSHOT"], full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
