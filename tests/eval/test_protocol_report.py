"""`hirm report`: HTML and Markdown pages from hand-written run folders of each protocol, blur, errors, and a
render in headless Chromium."""

import base64
import hashlib
import io
import json
import re
import subprocess

import numpy as np
import pytest
from PIL import Image

from hirm.errors import HirmError
from hirm.eval.protocols.report import _blur_exposed, write_report

BASE_RGB, ERASED_RGB = (220, 40, 40), (40, 90, 220)
BOX = [16, 16, 32, 32]  # x, y, w, h of the exposed detection in every nude image
SCRIPT = "<script>alert('x')</script> a person & a <b>beach</b>"


def _picture(rgb: tuple[int, int, int]) -> Image.Image:
    """64x64 checkerboard of `rgb` and white in 4 px squares: texture, so a blur shows, and an exact colour."""
    yy, xx = np.mgrid[:64, :64]
    on = ((yy // 4 + xx // 4) % 2 == 0)[..., None]
    return Image.fromarray(np.where(on, np.array(rgb, np.uint8), np.uint8(255)).astype(np.uint8))


def _scores(protocol: str, key: str, nude: bool) -> dict:
    if protocol == "nudity":
        exposed = {"FEMALE_BREAST_EXPOSED": 0.81} if nude else {}
        dets = [{"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 10, 10]}]  # not exposed: never blurred
        if nude:
            dets.append({"class": "FEMALE_BREAST_EXPOSED", "score": 0.81, "box": BOX})
        return {"nude": nude, "exposed": exposed, "detections": dets}
    if protocol == "coco":
        return {"clip_score": 0.3 + int(key) / 100}
    return {"pred_style": "Monet" if nude else "Van_Gogh", "pred_object": "Dogs"}


METRICS = {
    "nudity": {"variants": {"base": {"nudity_rate": 0.125, "n_images": 3, "n_nude": 1,
                                     "per_class": {"FEMALE_BREAST_EXPOSED": 7, "BUTTOCKS_EXPOSED": 2}},
                            "erased": {"nudity_rate": 0.03333, "n_images": 3, "n_nude": 0,
                                       "per_class": {"FEMALE_BREAST_EXPOSED": 1}}}},
    "coco": {"variants": {"base": {"clip_score": 0.31234, "n_images": 3},
                          "erased": {"clip_score": 0.30456, "n_images": 3}}, "fid": 12.3456},
    "unlearncanvas": {"variants": {"base": {"ua": 0.05, "ira": 0.9, "cra": 0.97, "style_acc": 0.95,
                                            "object_acc": 0.9, "n_images": 3},
                                   "erased": {"ua": 0.9125, "ira": 0.8, "cra": 0.95, "style_acc": 0.31,
                                              "object_acc": 0.88, "n_images": 3, "concept": "Van_Gogh",
                                              "domain": "style"}}},
}


def make_run(root, protocol: str, variants=("base", "erased"), settings=None):
    """A finished run folder as the runner writes it: 3 prompts, key 00001 nude in base (its prompt holds a
    <script> tag)."""
    settings = {"steps": 50, "guidance": 7.5, "scheduler": "DDIMScheduler", "threshold": 0.45, **(settings or {})}
    if protocol == "unlearncanvas":
        settings["concept"] = "Van_Gogh"
    run = root / protocol
    (run / "run.json").parent.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({
        "protocol": protocol, "model": "CompVis/stable-diffusion-v1-4",
        "patch": f"patches/{protocol}.safetensors" if "erased" in variants else None, "variants": list(variants),
        "settings": settings, "prompts_file": None, "n_prompts": 3}))
    for v in variants:
        for i, key in enumerate(["00000", "00001", "00002"]):
            nude = key == "00001" and v == "base"
            img = run / "images" / v / f"{key}.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            _picture(BASE_RGB if v == "base" else ERASED_RGB).save(img)
            rec = run / "records" / v / f"{key}.json"
            rec.parent.mkdir(parents=True, exist_ok=True)
            record = {"key": key, "prompt": SCRIPT if key == "00001" else f"prompt number {i}", "seed": i,
                      "guidance": 7.5, "scores": _scores(protocol, key, nude)}
            if protocol == "unlearncanvas":
                record.update({"style": "Van_Gogh", "object": "Dogs"})
            rec.write_text(json.dumps(record))
    metrics = {"protocol": protocol, **METRICS[protocol]}
    metrics["variants"] = {v: metrics["variants"][v] for v in variants}
    if protocol == "coco" and "erased" not in variants:
        metrics.update(fid=None, fid_note="FID compares erased against base images: pass --patch")
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def _embedded(page: str, alt: str) -> Image.Image:
    m = re.search(r'<img src="data:image/png;base64,([^"]+)"[^>]*alt="' + re.escape(alt) + '"', page)
    assert m, f"no embedded image {alt!r}"
    return Image.open(io.BytesIO(base64.b64decode(m.group(1)))).convert("RGB")


def _check_common(run, page: str, md: str):
    assert "<script>" not in page and "&lt;script&gt;" in page  # the prompt, escaped
    assert "&amp; a &lt;b&gt;beach&lt;/b&gt;" in page
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page)  # self-contained
    assert "<script" not in page.replace("&lt;script", "")
    assert "&lt;script&gt;" in md and "<script>" not in md
    refs = re.findall(r"\]\((report/[^)]+)\)", md)
    assert refs and all((run / r).is_file() for r in refs)
    assert "this run (erased)" in page and "this run (erased)" in md


def test_nudity_report(tmp_path):
    run = make_run(tmp_path, "nudity", settings={"prompt_set": "i2p"})
    html_path, md_path = write_report(run, sample=2)
    assert (html_path, md_path) == (run / "report.html", run / "report.md")
    page, md = html_path.read_text(), md_path.read_text()
    _check_common(run, page, md)
    for text in ("12.50%", "3.33%", "FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED", "DDIMScheduler",
                 "CompVis/stable-diffusion-v1-4", "Ring-A-Bell-16", "MMA-Diffusion", "8.00%", "0.293"):
        assert text in page, text
    assert "this prompt set" not in page  # "i2p" is the paper's I2P column
    row = re.search(r"<tr class=\"ours\"><td>this run \(erased\)</td>(.*?)</tr>", page).group(1)
    assert re.findall(r"<td>(.*?)</td>", row) == ["–", "–", "–", "3.33%", "–"]
    # the per-class table: class rows x variant columns
    assert re.search(r"<td>BUTTOCKS_EXPOSED</td><td>2</td><td>0</td>", page)
    # 2 of 3 prompts, the nude one first; each row base + erased
    assert page.count("<img ") == 4 and page.index('alt="base 00001"') < page.index('alt="base 00000"')
    assert "00002" not in page.split("<h2>Samples</h2>")[1]
    assert "| FEMALE\\_BREAST\\_EXPOSED | 7 | 1 |" in md
    assert "nude: FEMALE_BREAST_EXPOSED 0.81" in page


def test_nudity_prompt_set_outside_the_paper_gets_its_own_column(tmp_path):
    run = make_run(tmp_path, "nudity", settings={"prompt_set": "my-prompts"})
    page = write_report(run)[0].read_text()
    row = re.search(r"<tr class=\"ours\"><td>this run \(base\)</td>(.*?)</tr>", page).group(1)
    assert "<th>this prompt set</th>" in page
    assert re.findall(r"<td>(.*?)</td>", row) == ["–", "–", "–", "–", "12.50%", "–"]


def test_coco_report(tmp_path):
    run = make_run(tmp_path, "coco")
    page, md = (p.read_text() for p in write_report(run))
    _check_common(run, page, md)
    for text in ("0.3123", "0.3046", "erased images against the base images: 12.35", "0.307", "CLIP score",
                 "00001 · seed 1 · guidance 7.5"):
        assert text in page, text
    assert page.count("<img ") == 6  # 3 prompts in key order, base + erased


def test_unlearncanvas_report(tmp_path):
    run = make_run(tmp_path, "unlearncanvas")
    page, md = (p.read_text() for p in write_report(run))
    _check_common(run, page, md)
    for text in ("91.25%", "80.00%", "95.00%", "31.00%", "98.58%", "HiRM-S", "erasing a style", "derived from"):
        assert text in page, text
    assert "erasing an object" not in page  # Van_Gogh is a style in the records
    assert "style Van_Gogh → judged Monet" in page


def test_base_only_run_shows_one_image_per_row(tmp_path):
    run = make_run(tmp_path, "coco", variants=("base",))
    page = write_report(run, sample=5)[0].read_text()
    assert page.count("<img ") == 3 and "<th>erased</th>" not in page
    assert "this run (base)" in page and "none (base model only)" in page
    assert "FID was not computed (FID compares erased against base images: pass --patch)" in page
    assert len(list((run / "report").glob("*.png"))) == 3


def test_blur_helper_blurs_exposed_boxes_only():
    image = _picture(BASE_RGB)
    before = np.asarray(image).copy()
    scores = _scores("nudity", "00001", nude=True)
    out = np.asarray(_blur_exposed(image, scores)).astype(int)
    assert np.array_equal(np.asarray(image), before)  # the input is not modified
    x, y, w, h = BOX
    inside = np.zeros(before.shape[:2], bool)
    inside[y:y + h, x:x + w] = True
    assert np.array_equal(out[~inside], before[~inside])  # incl. the FACE_FEMALE box: not an exposed class
    assert np.abs(out[inside] - before[inside]).mean() > 30
    assert (out[y, x:x + w] == 0).all()  # black outline along the box's top edge
    # interior: a blur of the checkerboard, a pink mush between the two colours
    core = out[y + 4:y + h - 4, x + 4:x + w - 4]
    assert core.std(axis=(0, 1)).max() < 25
    assert np.array_equal(np.asarray(_blur_exposed(image, _scores("nudity", "00000", nude=False))), before)


@pytest.mark.parametrize("blur", [True, False])
def test_report_blurs_embedded_nude_images_not_files(tmp_path, blur):
    run = make_run(tmp_path, "nudity")
    files = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (run / "images").rglob("*.png")}
    page = write_report(run, blur=blur)[0].read_text()
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (run / "images").rglob("*.png")} == files
    original = np.asarray(_picture(BASE_RGB).resize((256, 256), Image.Resampling.NEAREST)).astype(int)
    nude = np.asarray(_embedded(page, "base 00001")).astype(int)
    assert nude.shape == (256, 256, 3)  # 64 px grows by 4, nearest neighbour
    inside = np.zeros((256, 256), bool)
    x, y, w, h = (4 * v for v in BOX)
    inside[y:y + h, x:x + w] = True
    assert np.array_equal(nude[~inside], original[~inside])
    assert (np.abs(nude[inside] - original[inside]).mean() > 30) == blur
    # images that are not nude are never changed
    assert np.array_equal(np.asarray(_embedded(page, "base 00000")).astype(int), original)
    assert ("exposed regions are blurred" in page) == blur
    md_image = np.asarray(Image.open(run / "report" / "00001-base.png").convert("RGB")).astype(int)
    assert np.array_equal(md_image, nude)


def test_rerun_replaces_old_thumbnails(tmp_path):
    run = make_run(tmp_path, "coco")
    write_report(run, sample=3)
    write_report(run, sample=1)
    assert sorted(p.name for p in (run / "report").glob("*.png")) == ["00000-base.png", "00000-erased.png"]


def test_errors_name_the_problem_and_the_fix(tmp_path):
    with pytest.raises(HirmError, match=re.escape("has no run.json: pass the --out folder of a `hirm eval --protocol` "
                                                  "run")):
        write_report(tmp_path)
    run = make_run(tmp_path, "coco")
    (run / "metrics.json").unlink()
    with pytest.raises(HirmError, match=re.escape("has no metrics.json: the run did not finish; re-run the same "
                                                  "`hirm eval` command to resume it")):
        write_report(run)
    (run / "run.json").write_text("{not json")
    with pytest.raises(HirmError, match=re.escape("run.json is not valid JSON")):
        write_report(run)
    (run / "run.json").write_text(json.dumps({"protocol": "gibberish", "variants": ["base"]}))
    with pytest.raises(HirmError, match="'gibberish'"):
        write_report(run)
    with pytest.raises(HirmError, match="--sample -1"):
        write_report(run, sample=-1)


def _near(pixels: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= 12).sum())


def test_report_renders_in_headless_chromium(tmp_path, chromium):
    binary = chromium
    run = make_run(tmp_path, "nudity", settings={"prompt_set": "Ring-A-Bell-16"})
    page = write_report(run, sample=2)[0]
    shot = tmp_path / "shot.png"
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600", f"--screenshot={shot}",
           f"file://{page}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert shot.is_file(), f"no screenshot (exit {r.returncode}): {r.stderr[-2000:]}"
    with Image.open(shot) as im:
        assert im.size == (1200, 1600)
        pixels = np.asarray(im.convert("RGB")).astype(int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, tables and images, not a blank page
    # both images of each sampled prompt are on screen: thousands of pixels of each synthetic colour
    assert _near(pixels, BASE_RGB) > 20_000 and _near(pixels, ERASED_RGB) > 20_000
