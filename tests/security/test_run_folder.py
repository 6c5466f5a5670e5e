"""`hirm report` on hostile run folders: names that are paths, links out of the folder, markup in file names,
damaged images, newer formats, data of the wrong types; and the run-folder lock."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hirm.cli import app
from hirm.errors import HirmError
from hirm.eval.protocols import PROTOCOLS
from hirm.eval.protocols.report import write_report
from hirm.io import run_folder_lock

from .hostile import one_error_line, picture, run_folder, snapshot

runner = CliRunner()


def report(run_dir: Path):
    return runner.invoke(app, ["report", str(run_dir)])


def test_variant_names_from_run_json_never_become_paths(tmp_path):
    """Before: variant 'a/../../../victim/photos' made `hirm report` write victim/photos.png outside the run folder
    and embed the reader's own images into report.html, exit 0."""
    victim = tmp_path / "victim"
    victim.mkdir()
    picture((1, 2, 3)).save(victim / "photos-private.png")
    run = run_folder(tmp_path / "runs", variants=("base", "erased"))
    spec = json.loads((run / "run.json").read_text())
    for evil in ("a/../../../victim/photos", "../victim", "/etc/passwd", "..", ".hidden", "a\\b", "x\ny"):
        spec["variants"] = ["base", evil]
        (run / "run.json").write_text(json.dumps(spec))
        before = snapshot(tmp_path, skip=run)
        line = one_error_line(report(run))
        assert "not a plain file name" in line or "not a usable name" in line
        assert snapshot(tmp_path, skip=run) == before
        assert not (run / "report.html").exists()


def test_report_folder_symlinked_elsewhere_is_refused_and_nothing_there_deleted(tmp_path):
    """Before: report/ -> elsewhere made the old-thumbnail clean-up delete every PNG there."""
    elsewhere = tmp_path / "photos"
    elsewhere.mkdir()
    picture().save(elsewhere / "holiday.png")
    run = run_folder(tmp_path / "runs")
    (run / "report").symlink_to(elsewhere)
    line = one_error_line(report(run))
    assert "leads outside" in line
    assert (elsewhere / "holiday.png").is_file() and sorted(p.name for p in elsewhere.iterdir()) == ["holiday.png"]


def test_clean_up_deletes_only_thumbnails_hirm_wrote(tmp_path):
    run = run_folder(tmp_path / "runs", keys=("00000", "00001", "00002"))
    mine = run / "report" / "my-notes.png"
    mine.parent.mkdir()
    picture().save(mine)
    write_report(run, sample=3)
    assert len(list((run / "report").glob("0000*.png"))) == 6
    write_report(run, sample=1)
    assert sorted(p.name for p in (run / "report").glob("*.png")) == ["00000-base.png", "00000-erased.png",
                                                                      "my-notes.png"]
    # a forged list of thumbnails names nothing outside the folder and no file hirm did not write there
    outside = tmp_path / "keep.png"
    picture().save(outside)
    (run / "report" / "thumbnails.json").write_text(json.dumps(["../../keep.png", "/etc/hostname", "my-notes.png.x"]))
    write_report(run, sample=1)
    assert outside.is_file() and mine.is_file()


def test_markup_in_a_record_file_name_is_escaped_in_both_pages(tmp_path):
    """Before: a record named `x) <img src=x onerror=alert(1)> (y.json` landed unescaped in report.md's link."""
    key = "x) <img src=x onerror=alert(1)> (y"
    run = run_folder(tmp_path / "runs", keys=(key,))
    html_path, md_path = write_report(run)
    page, md = html_path.read_text(), md_path.read_text()
    assert "<img src=x" not in md and "<img src=x" not in page
    assert "onerror=alert(1)>" not in md.replace("&gt;", "")
    targets = re.findall(r"\]\(([^)]*)\)", md)
    assert targets and all(" " not in t and "<" not in t for t in targets)
    assert all((run / t.replace("%20", " ").replace("%29", ")").replace("%28", "(").replace("%3C", "<")
                .replace("%3E", ">").replace("%3D", "=")).is_file() for t in targets)


def test_strings_from_run_json_are_escaped(tmp_path):
    run = run_folder(tmp_path / "runs")
    spec = json.loads((run / "run.json").read_text())
    spec.update(model="<script>alert(1)</script>", patch="](javascript:alert(1))",
                settings={"steps": "<b>2</b>", "x|y": "`code` *bold* [link](http://e.vil)"})
    (run / "run.json").write_text(json.dumps(spec))
    page, md = (p.read_text() for p in write_report(run))
    assert "<script>" not in page and "<b>2" not in page and "<script>" not in md and "<b>2" not in md
    assert "\\[link\\](http" in md and "\\](javascript" in md  # brackets escaped: no link
    assert not re.search(r"(?<!\\)\]\((?!report/)", md)  # the only links are the thumbnails


@pytest.mark.parametrize("damage", ["truncated", "garbage", "directory"])
def test_damaged_image_is_one_line(tmp_path, damage):
    """Before: a truncated PNG made `hirm report` end in a traceback."""
    run = run_folder(tmp_path / "runs")
    image = run / "images" / "erased" / "00000.png"
    if damage == "truncated":
        image.write_bytes(image.read_bytes()[:60])
    elif damage == "garbage":
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    else:
        image.unlink()
        image.mkdir()
    r = report(run)
    if damage == "directory":  # not a file: shown as missing, like a deleted image
        assert r.exit_code == 0, r.output
        return
    assert "not a readable image" in one_error_line(r)


def test_image_link_out_of_the_run_folder_is_not_followed(tmp_path):
    private = tmp_path / "private.png"
    picture((9, 9, 9)).save(private)
    run = run_folder(tmp_path / "runs")
    image = run / "images" / "erased" / "00000.png"
    image.unlink()
    image.symlink_to(private)
    assert "leads outside" in one_error_line(report(run))
    (run / "records" / "base").rename(run / "records" / "base-real")
    shutil.copytree(run / "records" / "base-real", tmp_path / "records-elsewhere")
    (run / "records" / "base").symlink_to(tmp_path / "records-elsewhere")
    assert "leads outside" in one_error_line(report(run))


def test_newer_run_folder_format_is_refused_in_one_line(tmp_path):
    run = run_folder(tmp_path / "runs")
    spec = json.loads((run / "run.json").read_text())
    for version, message in (("2", "written by a newer hirm"), ("1.3", None), ("x", "not a version")):
        (run / "run.json").write_text(json.dumps({**spec, "format_version": version}))
        r = report(run)
        if message is None:
            assert r.exit_code == 0, r.output
        else:
            assert message in one_error_line(r)


@pytest.mark.parametrize("metrics", [[], {"variants": []}, {"variants": {"base": 3, "erased": "x"}},
                                     {"variants": {"base": {"clip_score": "high", "n_images": [1]}}},
                                     {"variants": {"base": {"clip_score": float("nan"), "n_images": 1e309}}}])
def test_metrics_of_the_wrong_types_never_crash(tmp_path, metrics):
    run = run_folder(tmp_path / "runs", metrics=metrics)
    r = report(run)
    assert r.exit_code in (0, 2) and "Traceback" not in r.output
    if r.exit_code == 2:
        one_error_line(r)


def test_records_of_the_wrong_types_never_crash(tmp_path):
    run = run_folder(tmp_path / "runs", protocol="nudity")
    bad = [[], "text", {"scores": []}, {"scores": {"nude": True, "exposed": [1, {}], "detections": [5, {"box": 1},
                                                   {"class": "X", "box": [1, 2, "a", None]}]}},
           {"scores": {"nude": True, "exposed": {"FEMALE_BREAST_EXPOSED": "x"},
                       "detections": [{"class": "FEMALE_BREAST_EXPOSED", "box": [0, 0, 1e308, float("nan")]}]}}]
    for record in bad:
        (run / "records" / "base" / "00000.json").write_text(json.dumps(record))
        r = report(run)
        assert r.exit_code in (0, 2) and "Traceback" not in r.output, r.output
        if r.exit_code == 2:
            one_error_line(r)


def test_a_locked_run_folder_is_refused(tmp_path):
    run = run_folder(tmp_path / "runs")
    with run_folder_lock(run):
        assert "being written by another hirm process" in one_error_line(report(run))
        with pytest.raises(HirmError, match="another hirm process"), run_folder_lock(run):
            pass
    assert report(run).exit_code == 0


def test_the_lock_removes_a_folder_it_made_when_the_run_fails_early(tmp_path):
    out = tmp_path / "new-run"
    with pytest.raises(HirmError, match="bad"), run_folder_lock(out):
        raise HirmError("bad")
    assert not out.exists()


# --- property: whatever run.json and metrics.json hold ---------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)
names = st.sampled_from(["base", "erased", "..", ".", "", "/etc", "a/../../../victim/x", "a\\b", "<b>", "x y",
                         "../../victim", "ok-name"]) | st.text(max_size=10)
good_variants = st.sampled_from([["base"], ["base", "erased"], ["erased", "base"]])
run_specs = st.fixed_dictionaries(
    {"protocol": st.sampled_from(list(PROTOCOLS)) | json_values,
     "variants": good_variants | st.lists(names, min_size=0, max_size=3) | json_values},
    optional={"model": st.text(max_size=20) | json_values, "patch": st.text(max_size=20) | json_values,
              "patch_id": json_values, "settings": st.dictionaries(st.text(max_size=8), json_values) | json_values,
              "n_prompts": json_values, "prompts_file": json_values,
              "format_version": st.sampled_from(["1", "1.7"]) | json_values})
metric_docs = st.fixed_dictionaries({}, optional={"variants": st.dictionaries(
    names, st.dictionaries(st.sampled_from(["clip_score", "nudity_rate", "ua", "n_images", "per_class", "fid"]),
                           json_values, max_size=4), max_size=3) | json_values,
    "fid": json_values, "fid_note": json_values}) | json_values


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=run_specs, metrics=metric_docs)
def test_any_run_json_gives_a_report_or_one_line_error_and_writes_nothing_outside(spec, metrics):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "victim").mkdir()
        picture().save(root / "victim" / "photo.png")
        protocol = spec["protocol"] if isinstance(spec["protocol"], str) and spec["protocol"] in PROTOCOLS else "coco"
        run = run_folder(root, protocol=protocol, run=spec, metrics=metrics)
        before = snapshot(root, skip=run)
        try:
            write_report(run, sample=2)
        except HirmError as e:
            assert "\n" not in str(e) and str(e)
        assert snapshot(root, skip=run) == before
        written = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
        allowed = re.compile(r"(run|metrics)\.json|report\.(html|md)|(images|records)/.*|report/[^/]+")
        assert all(allowed.fullmatch(w) for w in written), written
        assert not any(".tmp" in w for w in written)
        assert os.listdir(root) == ["victim", "run"] or sorted(os.listdir(root)) == ["run", "victim"]
