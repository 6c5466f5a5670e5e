"""`hirm eval --protocol` end to end on a tiny random SD pipeline: every protocol, the real NudeNet detector,
resume after a kill, sharding over two processes, and the one-line errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import dummies
from hirm.cli import app
from hirm.eval.protocols.nudity import exposed_classes
from hirm.eval.protocols.prompts import read_prompt_csv
from hirm.eval.protocols.unlearncanvas import OBJECTS, STYLES, accuracies, grid_items

runner = CliRunner()
PROMPTS = ["a red star", "a photo of a cat", "a dog <b>painting</b>", "van gogh star", "a blue circle",
           "a picture of a shape", "the red dog", "a cat in a photo"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def i2p(tmp_path_factory) -> Path:
    """An I2P-shaped CSV: case_number, prompt, evaluation_seed, evaluation_guidance."""
    rows = [{"case_number": 10 * i, "prompt": p, "evaluation_seed": 100 + i, "evaluation_guidance": 7 + i % 2}
            for i, p in enumerate(PROMPTS)]
    return write_csv(tmp_path_factory.mktemp("csv") / "i2p.csv", rows)


@pytest.fixture(scope="module")
def patch(sd_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("patch") / "star.safetensors"
    r = run("erase", "--model", sd_folder, "--concept", "a red star", "--out", out, "--steps", "3")
    assert r.exit_code == 0, r.output
    return out


def test_read_prompt_csv_columns_seeds_and_keys(tmp_path):
    items = read_prompt_csv(write_csv(tmp_path / "a.csv", [
        {"case_number": "7", "adv_prompt": "x y", "evaluation_seed": "2734.0", "evaluation_guidance": "9"},
        {"case_number": "8", "adv_prompt": "z", "evaluation_seed": "", "evaluation_guidance": ""},
    ]), seed=7867)
    assert [(it.key, it.prompt, it.seed, it.guidance) for it in items] == [("7", "x y", 2734, 9.0),
                                                                          ("8", "z", 7867, None)]
    items = read_prompt_csv(write_csv(tmp_path / "b.csv", [{"text": "a"}, {"text": "b"}, {"text": "c"}]), 5,
                            limit=2)
    assert [(it.key, it.seed) for it in items] == [("000000", 5), ("000001", 5)]


@pytest.mark.parametrize(("rows", "message"), [
    ([{"caption": "a"}], "has no"),
    ([{"prompt": "a", "evaluation_seed": "x"}], "line 2: evaluation_seed 'x' is not an integer"),
    ([{"prompt": "a", "case_number": 1}, {"prompt": "b", "case_number": 1}], "appears twice"),
    ([{"prompt": ""}], "line 2: empty 'prompt'"),
])
def test_read_prompt_csv_errors(tmp_path, rows, message):
    from hirm.errors import HirmError

    with pytest.raises(HirmError, match=message):
        read_prompt_csv(write_csv(tmp_path / "bad.csv", rows), 0)


def test_exposed_classes_uses_the_six_exposed_classes_and_the_threshold():
    dets = [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.5}, {"class": "FEMALE_BREAST_EXPOSED", "score": 0.7},
            {"class": "FACE_FEMALE", "score": 0.99}, {"class": "BUTTOCKS_EXPOSED", "score": 0.44},
            {"class": "FEMALE_BREAST_COVERED", "score": 0.9}]
    assert exposed_classes(dets, 0.45) == {"FEMALE_BREAST_EXPOSED": 0.7}
    assert exposed_classes(dets, 0.6) == {"FEMALE_BREAST_EXPOSED": 0.7}
    assert exposed_classes(dets, 0.4) == {"FEMALE_BREAST_EXPOSED": 0.7, "BUTTOCKS_EXPOSED": 0.44}
    assert exposed_classes(dets, 0.7) == {}


def test_unlearncanvas_grid_and_scores():
    items = grid_items(188)
    assert len(items) == 51 * 20 and len(set(it.key for it in items)) == 1020
    assert items[45 * 20 + 4].prompt == "A Cats image in Van Gogh style." and items[0].seed == 188
    # a style erasure that works on Van_Gogh, where the object head gets one Monet image wrong
    records = []
    for it in items:
        s, o = it.meta["style"], it.meta["object"]
        wrong_object = s == "Monet" and o == "Cats"
        records.append({**it.meta, "scores": {"pred_style": "Monet" if s == "Van_Gogh" else s,
                                              "pred_object": "Dogs" if wrong_object else o}})
    r = accuracies(records, "van gogh")
    assert (r["concept"], r["domain"], r["ua"], r["ira"]) == ("Van_Gogh", "style", 1.0, 1.0)
    assert r["cra"] == pytest.approx(1 - 1 / 51 / 20)  # Cats: 50 of 51 right; mean over 20 objects
    assert r["style_acc"] == pytest.approx(50 / 51)


def _images(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted((run_dir / "images").rglob("*.png"))}


@pytest.fixture(scope="module")
def nudity_run(sd_folder, patch, i2p, tmp_path_factory) -> Path:
    """The reference run, made in this process at 1 thread (--threads) while the caller has 2: the runs in other
    processes below also compute at 1 thread, so they must match it byte for byte on any host."""
    out = tmp_path_factory.mktemp("runs") / "nudity"
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # another host's default count
    try:
        r = run("eval", "--protocol", "nudity", "--model", sd_folder, "--patch", patch, "--prompts", i2p,
                "--out", out, "--steps", "3", "--json", "--prompt-set", "I2P", "--batch-size", "1", "--threads", "1")
        assert torch.get_num_threads() == 2  # the caller's count is given back
    finally:
        torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    return out


def test_nudity_protocol_end_to_end(nudity_run, i2p):
    metrics = json.loads((nudity_run / "metrics.json").read_text())
    assert metrics["protocol"] == "nudity" and metrics["n_prompts"] == len(PROMPTS)
    for variant in ("base", "erased"):
        m = metrics["variants"][variant]
        assert m["n_images"] == len(PROMPTS) and 0.0 <= m["nudity_rate"] <= 1.0
        assert set(m["per_class"]) == {"FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED",
                                       "MALE_GENITALIA_EXPOSED", "BUTTOCKS_EXPOSED", "ANUS_EXPOSED"}
    record = json.loads((nudity_run / "records" / "base" / "10.json").read_text())
    # the CSV's seed and per-prompt guidance are used; the real NudeNet detector scored the image
    assert (record["prompt"], record["seed"], record["guidance"]) == ("a photo of a cat", 101, 8.0)
    assert isinstance(record["scores"]["detections"], list) and record["scores"]["nude"] is False
    spec = json.loads((nudity_run / "run.json").read_text())
    assert spec["variants"] == ["base", "erased"] and spec["settings"]["scheduler"] == "ddim"
    assert (spec["settings"]["threads"], spec["settings"]["device"]) == (1, "cpu")
    assert spec["versions"]["torch"] == torch.__version__ and set(spec["versions"]) == {"torch", "diffusers",
                                                                                        "transformers"}
    # the patch changes the images of the concept's prompt
    assert (nudity_run / "images/base/0.png").read_bytes() != (nudity_run / "images/erased/0.png").read_bytes()
    r = run("report", nudity_run)
    assert r.exit_code == 0, r.output
    assert "I2P" in (nudity_run / "report.html").read_text()


def test_resume_redoes_only_missing_or_corrupt_images(nudity_run, sd_folder, patch, i2p, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(nudity_run, out)
    before = _images(out)
    (out / "images/erased/30.png").unlink()
    (out / "images/base/20.png").write_bytes(before["images/base/20.png"][:40])  # a truncated PNG
    stamp = {p: p.stat().st_mtime_ns for p in (out / "records").rglob("*.json")}
    r = run("eval", "--protocol", "nudity", "--model", sd_folder, "--patch", patch, "--prompts", i2p, "--out", out,
            "--steps", "3", "--prompt-set", "I2P", "--batch-size", "1")
    assert r.exit_code == 0, r.output
    assert "nudity_rate" in r.output and "hirm report" in r.output  # the table, for people
    assert _images(out) == before
    redone = sorted(str(p.relative_to(out)) for p, t in stamp.items() if p.stat().st_mtime_ns != t)
    assert redone == ["records/base/20.json", "records/erased/30.json"]


def test_resume_refuses_other_settings(nudity_run, sd_folder, patch, i2p):
    r = run("eval", "--protocol", "nudity", "--model", sd_folder, "--patch", patch, "--prompts", i2p,
            "--out", nudity_run, "--steps", "4", "--prompt-set", "I2P")
    assert r.exit_code == 2 and "other settings (settings.steps" in r.output
    r = run("eval", "--protocol", "nudity", "--model", sd_folder, "--patch", patch, "--prompts", i2p,
            "--out", nudity_run, "--steps", "3", "--prompt-set", "I2P", "--threads", "2")
    assert r.exit_code == 2 and "other settings (settings.threads; e.g. settings.threads was 1, now 2)" in r.output


def test_generation_and_scoring_run_at_the_runs_thread_count(sd_folder, i2p, tmp_path, monkeypatch,
                                                            replace_everywhere):
    import hirm.generate
    from hirm.eval.protocols.nudity import Nudity

    seen = []
    real_sample, real_load = hirm.generate.sample, Nudity.load

    def spy_sample(*args, **kwargs):
        seen.append(("sample", torch.get_num_threads()))
        return real_sample(*args, **kwargs)

    def spy_load(self, device):
        seen.append(("load", torch.get_num_threads()))  # NudeNet's onnxruntime session takes torch's count
        return real_load(self, device)

    replace_everywhere(real_sample, spy_sample)
    monkeypatch.setattr(Nudity, "load", spy_load)
    before = torch.get_num_threads()
    out = tmp_path / "r"
    args = ("eval", "--protocol", "nudity", "--model", sd_folder, "--prompts", i2p, "--out", out, "--steps", "1",
            "--limit", "2", "--batch-size", "1", "--json")
    try:
        torch.set_num_threads(1)
        r = run(*args, "--threads", "2")  # a new run: the given count, recorded
        assert r.exit_code == 0, r.output
        assert seen == [("load", 2), ("sample", 2), ("sample", 2)] and torch.get_num_threads() == 1
        assert json.loads((out / "run.json").read_text())["settings"]["threads"] == 2
        seen.clear()
        (out / "records/base/10.json").unlink()
        r = run(*args)  # a resume without --threads: the run's count, whatever the caller's
        assert r.exit_code == 0, r.output
        assert seen == [("load", 2), ("sample", 2)] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    # other library versions compute other images: refused, naming them
    spec = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**spec, "versions": {**spec["versions"], "torch": "1.0"}}))
    r = run(*args)
    assert r.exit_code == 2 and "other settings (versions;" in r.output and "'torch': '1.0'" in r.output
    # a run.json from before hirm recorded threads, device and versions resumes
    old = {k: v for k, v in spec.items() if k != "versions"}
    old["settings"] = {k: v for k, v in spec["settings"].items() if k not in ("threads", "device")}
    (out / "run.json").write_text(json.dumps(old))
    r = run(*args)
    assert r.exit_code == 0, r.output
    r = run(*args, "--threads", "0")
    assert r.exit_code == 2 and "--threads 0" in r.output


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "hirm.cli", *[str(a) for a in args]]


def _env(threads: int = 1) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_killed_run_resumes_to_the_same_result(nudity_run, sd_folder, patch, i2p, tmp_path):
    out = tmp_path / "killed"
    args = ("eval", "--protocol", "nudity", "--model", sd_folder, "--patch", patch, "--prompts", i2p, "--out", out,
            "--steps", "3", "--json", "--prompt-set", "I2P", "--batch-size", "1")
    # as the reference: 1 thread, from --threads
    proc = subprocess.Popen(_cli(*args, "--threads", "1"), env=_env(2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / "records").rglob("*.json"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "records").rglob("*.json")))
    assert 0 < done < 2 * len(PROMPTS), "the kill should land mid-run"
    assert not (out / "metrics.json").exists()
    # the resume, in a process whose own count is 2, computes at the run's recorded 1
    subprocess.run(_cli(*args), env=_env(2), check=True, capture_output=True)
    assert _images(out) == _images(nudity_run)
    assert json.loads((out / "metrics.json").read_text()) == json.loads((nudity_run / "metrics.json").read_text())


def test_two_processes_give_the_same_outputs_as_one(nudity_run, sd_folder, patch, i2p, tmp_path):
    out = tmp_path / "sharded"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hirm.cli",
           "eval", "--protocol", "nudity", "--model", str(sd_folder), "--patch", str(patch), "--prompts", str(i2p),
           "--out", str(out), "--steps", "3", "--json", "--prompt-set", "I2P", "--batch-size", "1", "--threads", "1"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _images(out) == _images(nudity_run)
    assert json.loads((out / "metrics.json").read_text()) == json.loads((nudity_run / "metrics.json").read_text())
    # only the main process prints the metrics
    assert done.stdout.count('"protocol": "nudity"') == 1


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    """A tiny random CLIP model with its processor, as a local folder (the shape of openai/clip-vit-base-patch32)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8}
    model = CLIPModel(CLIPConfig(text_config=dummies.clip_config().to_dict(), vision_config=vision,
                                 projection_dim=32)).eval()
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=dummies.clip_tokenizer())
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_coco_protocol_clip_score_and_fid(sd_folder, patch, clip_folder, tmp_path):
    rows = [{"case_number": i, "prompt": p, "evaluation_seed": i, "coco_id": 1000 + i} for i, p in enumerate(PROMPTS)]
    csv_path = write_csv(tmp_path / "coco.csv", rows)
    out = tmp_path / "coco"
    r = run("eval", "--protocol", "coco", "--model", sd_folder, "--patch", patch, "--prompts", csv_path,
            "--out", out, "--steps", "3", "--clip-model", clip_folder, "--fid-model", clip_folder, "--json")
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.output.strip().splitlines()[-1])
    assert metrics["fid_features"] == "clip" and metrics["fid"] > 0
    base = metrics["variants"]["base"]
    scores = [json.loads(p.read_text())["scores"]["clip_score"] for p in sorted((out / "records/base").glob("*"))]
    assert len(scores) == len(PROMPTS) and base["clip_score"] == pytest.approx(sum(scores) / len(scores))
    assert all(-1.0 <= s <= 1.0 for s in scores) and len(set(scores)) > 1


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> tuple[Path, Path]:
    """The style classifier as the benchmark ships it (a timm .pth), the object one as a transformers folder."""
    from transformers import ViTConfig, ViTForImageClassification

    paths = []
    for name, labels in (("style", STYLES), ("object", OBJECTS)):
        torch.manual_seed(0)
        cfg = ViTConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                        image_size=32, patch_size=16, layer_norm_eps=1e-6, id2label=dict(enumerate(labels)),
                        label2id={n: i for i, n in enumerate(labels)})
        model = ViTForImageClassification(cfg).eval()
        folder = tmp_path_factory.mktemp(f"{name}-classifier")
        if name == "style":
            torch.save({"model_state_dict": _timm_state_dict(model, folder)}, folder / "style.pth")
            paths.append(folder / "style.pth")
        else:
            model.save_pretrained(folder)
            paths.append(folder)
    return paths[0], paths[1]


def test_unlearncanvas_protocol_end_to_end(sd_folder, patch, classifiers, tmp_path):
    out = tmp_path / "uc"
    r = run("eval", "--protocol", "unlearncanvas", "--model", sd_folder, "--patch", patch, "--out", out,
            "--concept", "Abstractionism", "--style-classifier", classifiers[0], "--object-classifier",
            classifiers[1], "--steps", "4", "--limit", "24", "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.output.strip().splitlines()[-1])["variants"]["erased"]
    assert m["n_images"] == 24 and m["concept"] == "Abstractionism" and m["domain"] == "style"
    assert all(0.0 <= m[k] <= 1.0 for k in ("ua", "ira", "cra"))
    record = json.loads((out / "records/base/Abstractionism_Bears_seed188.json").read_text())
    assert record["prompt"] == "A Bears image in Abstractionism style." and record["seed"] == 188
    assert record["scores"]["pred_style"] in STYLES and record["scores"]["pred_object"] in OBJECTS
    assert json.loads((out / "run.json").read_text())["settings"]["scheduler"] == "pndm"


@pytest.mark.parametrize(("args", "message"), [
    (("--protocol", "nudity", "--prompts", "{csv}"), "--protocol needs --out RUN_DIR"),
    (("--protocol", "nudity", "--out", "{tmp}/r"), "needs --prompts FILE.csv"),
    (("--protocol", "nudity", "--out", "{tmp}/r", "--prompts", "{tmp}/none.csv"), "none.csv: no such file"),
    (("--protocol", "nudity", "--out", "{tmp}/r", "--prompts", "{csv}", "--concept", "x"),
     "--concept does not apply to --protocol nudity"),
    (("--protocol", "nudity", "--out", "{tmp}/r", "--prompts", "{csv}", "--threshold", "1.5"), "--threshold 1.5"),
    (("--protocol", "nudity", "--out", "{tmp}/r", "--prompts", "{csv}", "--templates", "a {{object}}"),
     "--templates applies to MiniCanvas evaluation only"),
    (("--protocol", "nudity", "--out", "{tmp}/r", "--prompts", "{csv}", "--scheduler", "dpm"), "--scheduler 'dpm'"),
    (("--protocol", "nudity", "--out", "{tmp}/r", "--prompts", "{csv}", "--limit", "0"), "--limit 0"),
    (("--protocol", "coco", "--out", "{tmp}/r", "--prompts", "{csv}"), "needs --clip-model PATH"),
    (("--protocol", "unlearncanvas", "--out", "{tmp}/r", "--prompts", "{csv}"), "needs --style-classifier"),
    (("--protocol", "unlearncanvas", "--out", "{tmp}/r", "--concept", "Vang Gogh"), "not an UnlearnCanvas class"),
    (("--protocol", "mmlu", "--out", "{tmp}/r"), "unknown protocol 'mmlu'; available: nudity, coco, unlearncanvas"),
    (("--prompts", "{csv}"), "--prompts applies to --protocol runs only"),
])
def test_protocol_errors(sd_folder, i2p, tmp_path, args, message):
    args = [a.format(csv=i2p, tmp=tmp_path) for a in args]
    r = run("eval", "--model", sd_folder, *args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_protocol_refuses_a_foreign_folder_and_two_patches(sd_folder, patch, i2p, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    r = run("eval", "--protocol", "nudity", "--model", sd_folder, "--prompts", i2p, "--out", tmp_path / "busy")
    assert r.exit_code == 2 and "not empty and has no run.json" in r.output
    r = run("eval", "--protocol", "nudity", "--model", sd_folder, "--prompts", i2p, "--out", tmp_path / "r",
            "--patch", patch, "--patch", patch)
    assert r.exit_code == 2 and "one --patch" in r.output


def _timm_state_dict(model, folder: Path) -> dict:
    """A `ViTForImageClassification`'s weights under timm's names (what the benchmark's .pth files hold)."""
    from safetensors.torch import load_file

    model.save_pretrained(folder)  # transformers' checkpoint names, the same in every version
    sd = load_file(folder / "model.safetensors")
    out = {"cls_token": sd["vit.embeddings.cls_token"], "pos_embed": sd["vit.embeddings.position_embeddings"],
           "patch_embed.proj.weight": sd["vit.embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
           "norm.weight": sd["vit.layernorm.weight"], "norm.bias": sd["vit.layernorm.bias"],
           "head.weight": sd["classifier.weight"], "head.bias": sd["classifier.bias"]}
    for i in range(model.config.num_hidden_layers):
        hf, timm = f"vit.encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{timm}attn.qkv.{kind}"] = torch.cat([sd[f"{hf}attention.attention.{p}.{kind}"]
                                                       for p in ("query", "key", "value")])
            for a, b in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                         ("attn.proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
                         ("mlp.fc2", "output.dense")):
                out[f"{timm}{a}.{kind}"] = sd[f"{hf}{b}.{kind}"]
    return out


def test_benchmark_timm_checkpoint_loads_as_the_same_classifier(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    from hirm.errors import HirmError
    from hirm.eval.protocols.unlearncanvas import vit_from_timm_checkpoint

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                    image_size=32, patch_size=16, layer_norm_eps=1e-6, num_labels=len(OBJECTS))
    reference = ViTForImageClassification(cfg).eval()
    path = tmp_path / "cls.pth"
    torch.save({"model_state_dict": _timm_state_dict(reference, tmp_path / "hf")}, path)
    loaded = vit_from_timm_checkpoint(path, OBJECTS, "--object-classifier").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=x).logits, reference(pixel_values=x).logits, atol=1e-5)
    assert loaded.config.id2label[4] == "Cats"
    with pytest.raises(HirmError, match="head has 20 classes"):
        vit_from_timm_checkpoint(path, STYLES, "--style-classifier")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(HirmError, match="not a readable torch checkpoint"):
        vit_from_timm_checkpoint(tmp_path / "junk.pth", OBJECTS, "--object-classifier")
