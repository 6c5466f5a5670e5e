"""Device and precision: half-precision pipeline folders (saved in fp16, and as fp16 variant files) erase, apply
and generate on the CPU; patches made in fp32 apply to fp16 and bf16 loads; a device this machine lacks is one
line and exit 2."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

import dummies
import hirm
from hirm.cli import app
from hirm.encoders import (
    choose_variant,
    find_text_encoders,
    load_pipeline,
    load_text_encoders,
    parse_dtype,
    resolve_device,
    resolve_dtype,
    stored_dtype,
    trainable_copies,
)
from hirm.errors import HirmError
from hirm.patch import Patch, fingerprint

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def error_lines(result) -> list[str]:
    return [line for line in result.output.replace("\r", "\n").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One tiny SD pipeline saved four ways: fp32; fp16 (torch_dtype fp16); fp16 variant files only; fp32 plain
    files beside fp16 variant files (as real checkpoints ship)."""
    root = tmp_path_factory.mktemp("precision")
    pipe = dummies.sd_pipeline()
    pipe.save_pretrained(root / "fp32")
    pipe.save_pretrained(root / "both")
    half = dummies.sd_pipeline().to(torch.float16)
    half.save_pretrained(root / "fp16")
    half.save_pretrained(root / "variant", variant="fp16")
    half.save_pretrained(root / "both", variant="fp16")
    return root


def test_folders_are_what_they_claim(folders):
    names = lambda d: sorted(f.name for f in (folders / d / "text_encoder").glob("*.safetensors"))  # noqa: E731
    assert names("variant") == ["model.fp16.safetensors"]
    assert names("both") == ["model.fp16.safetensors", "model.safetensors"]
    assert [stored_dtype(folders / d) for d in ("fp32", "fp16", "variant", "both")] == [
        torch.float32, torch.float16, torch.float16, torch.float32]


def test_variant_files_are_read_in_float16_or_when_they_are_all_there_is(folders):
    te = lambda d: [folders / d / "text_encoder"]  # noqa: E731
    assert choose_variant(te("fp32"), torch.float16) is None
    assert choose_variant(te("variant"), torch.float32) == "fp16"
    assert choose_variant(te("both"), torch.float16) == "fp16"
    assert choose_variant(te("both"), torch.float32) is None
    assert choose_variant(te("both"), torch.bfloat16) is None  # bf16 from the fp32 originals
    for d in ("fp16", "variant", "both"):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            pipe = load_pipeline(folders / d, dtype=dtype)
            assert pipe.text_encoder.dtype == pipe.unet.dtype == dtype, (d, dtype)
        [enc] = load_text_encoders(folders / d, dtype=torch.float16)
        assert enc.model.dtype == torch.float16
    # every load of one checkpoint, in fp16 or fp32, has the same (fp16-hashed) fingerprint
    prints = {fingerprint(load_pipeline(folders / d, dtype=t).text_encoder)
              for d in ("fp32", "fp16", "variant", "both") for t in (torch.float32, torch.float16)}
    assert len(prints) == 1


def test_fp16_folder_erases_applies_and_generates_from_the_cli(folders, tmp_path):
    for d in ("fp16", "variant"):
        patch = tmp_path / f"{d}.safetensors"
        r = run("erase", "--model", folders / d, "--concept", "a red star", "--out", patch, "--steps", "2",
                "--device", "cpu", "--dtype", "float16")
        assert r.exit_code == 0, r.output
        loaded = Patch.load(patch)
        assert {t.dtype for t in loaded.tensors.values()} == {torch.float32}  # fp32 master weights
        assert set(loaded.bf16_fingerprints) == {"text_encoder"}
        out = tmp_path / f"patched-{d}"
        r = run("apply", "--model", folders / d, "--patch", patch, "--out", out)  # --dtype auto: kept as stored
        assert r.exit_code == 0, r.output
        with safe_open(str(next((out / "text_encoder").glob("*.safetensors"))), "pt") as f:
            assert f.get_slice(next(iter(f.keys()))).get_dtype() == "F16"
        grid = tmp_path / f"{d}.png"
        for dtype in ("float16", "bfloat16", "auto"):
            r = run("generate", "--model", folders / d, "--patch", patch, "--prompt", "a red star", "-n", "1",
                    "--steps", "2", "--out", grid, "--device", "cpu", "--dtype", dtype)
            assert r.exit_code == 0, r.output
            grid.unlink()
    # the patch made from the fp16 files applies to the fp32 checkpoint they came from, and back
    r = run("apply", "--model", folders / "both", "--patch", tmp_path / "variant.safetensors", "--out",
            tmp_path / "both-patched", "--dtype", "float32")
    assert r.exit_code == 0, r.output


def test_half_precision_pipeline_trains_fp32_copies_and_is_left_as_it_was():
    half = dummies.sdxl_pipeline().to(torch.float16)
    before = {k: v.clone() for k, v in half.text_encoder_2.state_dict().items()}
    patch = hirm.erase(half, "a red star", steps=2, progress=False)
    assert half.text_encoder.dtype == half.text_encoder_2.dtype == torch.float16
    assert all(torch.equal(v, before[k]) for k, v in half.text_encoder_2.state_dict().items())
    assert patch.components == ["text_encoder", "text_encoder_2"]
    assert {t.dtype for t in patch.tensors.values()} == {torch.float32}
    with patch.applied(half):  # cast to fp16 on apply; the fingerprints match the fp16 weights
        key = next(k for k in patch.tensors if k.startswith("text_encoder_2::"))
        param = dict(half.text_encoder_2.named_parameters())[key.split("::", 1)[1]]
        assert param.dtype == torch.float16 and torch.equal(param, patch.tensors[key].half())
    full = dummies.sdxl_pipeline()  # the same weights in fp32 (fp16 rounding of them: same fingerprint)
    patch.apply(full)


def test_trainable_copies_leave_fp32_encoders_alone_and_copy_half_ones():
    enc = dummies.text_encoder()
    assert trainable_copies([enc])[0] is enc
    half = dummies.text_encoder()
    half.model.half()
    [copy] = trainable_copies([half], device="cpu")
    assert copy.model is not half.model and copy.model.dtype == torch.float32 and half.model.dtype == torch.float16
    assert fingerprint(copy.model) == fingerprint(half.model)


def test_bf16_pipeline_takes_a_patch_made_in_fp32_through_its_bf16_fingerprint(folders, tmp_path):
    patch = hirm.erase(str(folders / "fp32"), "a red star", steps=2, progress=False)
    bf16 = load_pipeline(folders / "fp32", dtype="bfloat16")
    assert fingerprint(bf16.text_encoder) != patch.fingerprints["text_encoder"]  # bf16 rounds the fp16 hash away
    saved = Patch.load(patch.save(tmp_path / "p.safetensors"))
    assert saved.id == patch.id and saved.bf16_fingerprints == patch.bf16_fingerprints
    with saved.applied(bf16):
        pass
    bf16.text_encoder.get_input_embeddings().weight.data[0, 0] += 1  # other weights: still refused
    with pytest.raises(HirmError, match="fingerprint"):
        saved.apply(bf16)
    old = Patch(**{**{f: getattr(patch, f) for f in ("tensors", "concepts", "method", "config", "fingerprints")}})
    with pytest.raises(HirmError, match="no bfloat16 fingerprint"):
        old.apply(load_pipeline(folders / "fp32", dtype=torch.bfloat16))
    merged = Patch.merge([patch])
    assert merged.bf16_fingerprints == patch.bf16_fingerprints


def test_flux_auto_dtype_is_bfloat16_on_a_gpu_and_float32_on_the_cpu(tmp_path):
    (tmp_path / "flux").mkdir()  # (the tiny T5 tokenizer does not survive save_pretrained: the index is enough)
    (tmp_path / "flux" / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert resolve_dtype("auto", "cuda", tmp_path / "flux") == torch.bfloat16
    assert resolve_dtype("auto", "cpu", tmp_path / "flux") == torch.float32
    assert resolve_dtype(None, "cuda", None) == torch.float16
    assert resolve_dtype("auto", "cuda", "minicanvas") == torch.float32
    assert resolve_dtype("bf16", "cpu", None) == torch.bfloat16
    # mini-Flux's CLIP patch applies to a bf16 Flux pipeline, which samples on the CPU
    flux = dummies.flux_pipeline().to(torch.bfloat16)
    patch = hirm.erase(flux, "a red star", steps=2, progress=False)
    assert find_text_encoders(flux)[0].model.dtype == torch.bfloat16
    from hirm.generate import sample

    with patch.applied(flux):
        assert sample(flux, ["a red star"], steps=1)[0].size == (16, 16)


def test_device_and_dtype_names(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("hirm.encoders._mps_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    for bad, message in (("cuda", "no CUDA GPU"), ("cuda:1", "no CUDA GPU"), ("mps", "MPS"), ("tpu", "use one of"),
                         ("meta", "hirm runs on")):
        with pytest.raises(HirmError, match=message):
            resolve_device(bad)
    assert parse_dtype("auto") is None and parse_dtype("fp16") == torch.float16
    with pytest.raises(HirmError, match="--dtype 'float8'"):
        parse_dtype("float8")


@pytest.mark.parametrize("command", ["erase", "apply", "generate", "eval", "eval-protocol"])
def test_a_device_this_machine_lacks_is_one_line_and_exit_2(command, sd_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    patch = tmp_path / "p.safetensors"
    hirm.erase(str(sd_folder), "star", steps=1, progress=False).save(patch)
    args = {"erase": ["erase", "--model", sd_folder, "--concept", "star", "--out", tmp_path / "x.safetensors"],
            "apply": ["apply", "--model", sd_folder, "--patch", patch, "--out", tmp_path / "o"],
            "generate": ["generate", "--model", sd_folder, "--prompt", "star", "--out", tmp_path / "g.png"],
            "eval": ["eval", "--model", "minicanvas", "--patch", patch],
            "eval-protocol": ["eval", "--protocol", "nudity", "--model", sd_folder, "--prompts", tmp_path / "p.csv",
                              "--out", tmp_path / "run"]}[command]
    (tmp_path / "p.csv").write_text("prompt\na red star\n")
    r = run(*args, "--device", "cuda")
    assert r.exit_code == 2, r.output
    lines = error_lines(r)
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda: no CUDA GPU here"), r.output
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "o").exists()
    r = run(*args, "--dtype", "float8")
    assert r.exit_code == 2 and "--dtype 'float8'" in r.output, r.output


def test_protocol_run_records_its_dtype_and_refuses_another_on_resume(sd_folder, tmp_path):
    prompts = tmp_path / "p.csv"
    with prompts.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "evaluation_seed"])
        w.writeheader()
        w.writerow({"prompt": "a red star", "evaluation_seed": 1})
    out = tmp_path / "run"
    args = ("eval", "--protocol", "nudity", "--model", sd_folder, "--prompts", prompts, "--out", out, "--steps", "1",
            "--batch-size", "1", "--json", "--device", "cpu")
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "run.json").read_text())["settings"]["dtype"] == "float32"
    r = run(*args, "--dtype", "bfloat16")
    assert r.exit_code == 2 and "settings.dtype" in r.output, r.output
