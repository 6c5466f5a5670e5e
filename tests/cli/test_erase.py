"""Every CLI command end to end on tiny saved models, and the one-line errors for bad input."""

import importlib
import json
import time

import pytest
import torch
from typer.testing import CliRunner

import dummies
from hirm.cli import app

runner = CliRunner()


def run(*args: str, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def error_lines(result) -> list[str]:
    """The error lines of a run (progress bars redraw with \r on the same stream)."""
    return [line for line in result.output.replace("\r", "\n").splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def patch_file(sd_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("patch") / "star.safetensors"
    r = run("erase", "--model", sd_folder, "--concept", "a red star", "--out", out, "--steps", "3")
    assert r.exit_code == 0, r.output
    return out


def test_erase_writes_patch_and_reports(patch_file):
    assert patch_file.exists() and patch_file.stat().st_size > 0


def test_inspect(patch_file):
    r = run("inspect", patch_file)
    assert r.exit_code == 0, r.output
    assert "a red star" in r.output and "text_encoder" in r.output
    r = run("inspect", patch_file, "--json")
    data = json.loads(r.output)
    # `hirm erase` without --method: hirm's default method, HiRM with the unnamed-prompt target
    assert data["method"] == "hirm" and data["config"]["variant"] == "u" and data["config"]["steps"] == 3


def test_robust_erase_writes_and_inspects_both_halves(sd_folder, tmp_path):
    out = tmp_path / "robust.safetensors"
    r = run("erase", "--model", sd_folder, "--concept", "star", "--robust", "--steps", "2", "--set",
            "uce.erase_scale=2", "--out", out)
    assert r.exit_code == 0, r.output
    r = run("inspect", out)
    assert r.exit_code == 0, r.output
    assert "method     hirm+uce" in r.output
    assert "component  text_encoder (by hirm):" in r.output and "component  unet (by uce):" in r.output
    assert "reference=unnamed" in r.output and "erase_scale=2" in r.output
    # one half alone (e.g. the CLIP half on a model without this UNet): the saved pipeline's UNet is the base one
    r = run("apply", "--model", sd_folder, "--patch", out, "--only", "text_encoder", "--out", tmp_path / "text-half")
    assert r.exit_code == 0, r.output
    import safetensors.torch

    def unet_weights(folder):
        return safetensors.torch.load_file(next((folder / "unet").glob("*.safetensors")))

    assert all(torch.equal(v, unet_weights(sd_folder)[k]) for k, v in unet_weights(tmp_path / "text-half").items())
    r = run("apply", "--model", sd_folder, "--patch", out, "--only", "vae", "--out", tmp_path / "none")
    assert r.exit_code == 2 and "--only vae: " in r.output and "edits none of these" in r.output


def test_apply_saves_patched_pipeline(sd_folder, patch_file, tmp_path):
    out = tmp_path / "patched"
    r = run("apply", "--model", sd_folder, "--patch", patch_file, "--out", out)
    assert r.exit_code == 0, r.output
    assert (out / "model_index.json").exists()
    # the saved pipeline's encoder is the patched one: the patch no longer matches its fingerprint
    r = run("apply", "--model", out, "--patch", patch_file, "--out", tmp_path / "twice")
    assert r.exit_code == 2 and "fingerprint" in r.output
    r = run("apply", "--model", sd_folder, "--patch", patch_file, "--out", out)
    assert r.exit_code == 2 and "not empty" in r.output


def test_generate_grid(sd_folder, patch_file, tmp_path):
    out = tmp_path / "grid.png"
    r = run("generate", "--model", sd_folder, "--patch", patch_file, "--prompt", "a red star", "-n", "2",
            "--steps", "2", "--out", out, "--compare")
    assert r.exit_code == 0, r.output
    from PIL import Image

    im = Image.open(out)
    assert im.size == (256, 256)  # 2 columns x 2 rows (unpatched, patched), 16 px images scaled to 128


def test_erase_bare_text_encoder_folder(tmp_path):
    folder = tmp_path / "te"
    dummies.clip_text_model().save_pretrained(folder)
    dummies.clip_tokenizer().save_pretrained(folder)
    out = tmp_path / "p.safetensors"
    r = run("erase", "--model", folder, "--concept", "star", "--out", out, "--steps", "2")
    assert r.exit_code == 0, r.output
    r = run("erase", "--model", folder, "--concept", "star", "--out", tmp_path / "s.safetensors",
            "--method", "hirm-s", "--target", "a shape", "--steps", "2")
    assert r.exit_code == 0, r.output


def test_methods_lists_hirm():
    r = run("methods")
    assert "hirm-r" in r.output and "hirm-s" in r.output


def test_methods_shows_every_option_with_its_default_and_help():
    """`hirm methods NAME` documents every --set KEY from the config's field metadata, with the method's own
    defaults (hirm's 100 steps and retain_at trained, not HiRMConfig's 50 and final)."""
    import dataclasses

    from hirm.erase import METHODS

    for name, spec in METHODS.items():
        fields = dataclasses.fields(spec.config_cls)
        assert all(f.metadata.get("help") for f in fields), name
        r = run("methods", name, env={"COLUMNS": "400"})
        assert r.exit_code == 0, r.output
        for f in fields:
            assert f"│ {f.name} " in r.output, (name, f.name)
    rows = {n: d for n, d, _ in METHODS["hirm"].option_help()}
    assert rows["steps"] == 100 and rows["variant"] == "u" and rows["supervise_module"] == "final"
    assert rows["retain_at"] == "trained"


@pytest.mark.parametrize(("args", "message"), [
    (["--concept", "", "--steps", "2"], "concept is empty"),
    (["--concept", "star " * 80, "--steps", "2"], "longer than the encoder's 77"),
    (["--concept", "star", "--method", "nope"], "unknown method"),
    (["--concept", "star", "--method", "hirm-s"], "needs a semantic target"),
    (["--concept", "star", "--layers", "7"], "has layers 0..3"),
    (["--concept", "star", "--method", "hirm-r", "--set", "target_norm=Infinity", "--steps", "2"], "loss became"),
    (["--concept", "star", "--set", "positions=middle"], "positions 'middle': use one of"),
    (["--concept", "star", "--set", "no_such_field=1"], "has no option 'no_such_field'"),
    (["--concept", "star", "--kind", "object"], "drop --kind"),
    (["--steps", "2"], "no concept given"),
    (["--concepts-file", "missing.txt"], "cannot read it"),
    (["--concept", "star", "--method", "hirm-r", "--preserve", "circle", "--steps", "2"], "--preserve holds prompts"),
    (["--concept", "star", "--preserve-file", "missing.txt"], "--preserve-file missing.txt: cannot read it"),
    (["--concept", "star", "--concept", "circle", "--method", "esd-x"], "one concept per run"),
    (["--concept", "star", "--method", "uce", "--robust"], "--robust adds a denoiser half to a HiRM text-encoder"),
    (["--concept", "star", "--method", "hirm-r+uce", "--robust"], "--robust adds a denoiser half"),
])
def test_erase_bad_input(sd_folder, tmp_path, args, message):
    out = tmp_path / "p.safetensors"
    r = run("erase", "--model", sd_folder, "--out", out, *args)
    assert r.exit_code == 2, r.output
    assert len(error_lines(r)) == 1 and message in error_lines(r)[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_several_concepts_from_flags_and_a_file_in_one_patch(sd_folder, tmp_path):
    listing = tmp_path / "concepts.txt"
    listing.write_text("# erased together\ncircle\n\nheart  # a comment\n")
    out = tmp_path / "p.safetensors"
    r = run("erase", "--model", sd_folder, "--out", out, "--concept", "star", "--concepts-file", listing,
            "--steps", "2")
    assert r.exit_code == 0, r.output
    r = run("inspect", out, "--json")
    assert json.loads(r.output)["concepts"] == ["star", "circle", "heart"]


def test_preserve_flags_and_file_reach_the_patch(sd_folder, tmp_path):
    listing = tmp_path / "keep.txt"
    listing.write_text("# kept\na blue circle\n\ncat  # a comment\n")
    out = tmp_path / "p.safetensors"
    r = run("erase", "--model", sd_folder, "--out", out, "--concept", "star", "--preserve", "a red painting",
            "--preserve-file", listing, "--set", "retain_weight=10", "--steps", "2")
    assert r.exit_code == 0, r.output
    r = run("inspect", out, "--json")
    assert json.loads(r.output)["config"]["preserve"] == ["a red painting", "a blue circle", "cat"]


def test_over_long_concept_truncated_when_asked(sd_folder, tmp_path):
    r = run("erase", "--model", sd_folder, "--out", tmp_path / "p.safetensors", "--concept", "star " * 80,
            "--steps", "1", "--set", "truncate=true")
    assert r.exit_code == 0, r.output


def test_unknown_model_and_model_without_clip(tmp_path):
    r = run("erase", "--model", tmp_path / "nowhere", "--concept", "x", "--out", tmp_path / "p.safetensors")
    assert r.exit_code == 2 and "never downloads" in r.output
    r = run("erase", "--model", "someone/not-cached", "--concept", "x", "--out", tmp_path / "p.safetensors")
    assert r.exit_code == 2 and "not in the local Hugging Face cache" in r.output
    folder = tmp_path / "t5"
    dummies.t5_model().save_pretrained(folder)
    r = run("erase", "--model", folder, "--concept", "x", "--out", tmp_path / "p.safetensors")
    assert r.exit_code == 2 and "not a CLIP text encoder" in r.output


def test_pipeline_without_clip_encoder_refused(tmp_path):
    import hirm

    class NoClip:
        def __init__(self):
            self.components = {"text_encoder": dummies.t5_model()}

    with pytest.raises(hirm.HirmError, match="has no CLIP text encoder"):
        hirm.erase(NoClip(), "star", steps=1)


def test_corrupt_patch_is_one_line_error(sd_folder, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    for cmd in (["inspect", bad], ["apply", "--model", sd_folder, "--patch", bad, "--out", tmp_path / "o"]):
        r = run(*cmd)
        assert r.exit_code == 2 and len(error_lines(r)) == 1, r.output
    assert not (tmp_path / "o").exists()


def test_ctrl_c_leaves_nothing(sd_folder, tmp_path, monkeypatch):
    mod = importlib.import_module("hirm.erase.hirm")  # `hirm.erase` the attribute is the function

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "optimise", interrupted)
    out = tmp_path / "p.safetensors"
    r = run("erase", "--model", sd_folder, "--concept", "star", "--out", out)
    assert r.exit_code == 130 and "nothing was written" in r.output
    assert not list(tmp_path.iterdir())


def test_out_must_be_safetensors(sd_folder, tmp_path):
    r = run("erase", "--model", sd_folder, "--concept", "star", "--out", tmp_path / "p.pt")
    assert r.exit_code == 2 and ".safetensors" in r.output


def test_hub_id_resolved_from_local_cache_only(tmp_path, monkeypatch):
    """A hub id already in the local cache loads; nothing is downloaded (HF_HUB_OFFLINE is set in tests)."""
    import huggingface_hub.constants as hub

    snapshot = tmp_path / "hub" / "models--someone--tiny-sd" / "snapshots" / "0123abcd"
    dummies.sd_pipeline().save_pretrained(snapshot)
    (tmp_path / "hub" / "models--someone--tiny-sd" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-sd" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "p.safetensors"
    r = run("erase", "--model", "someone/tiny-sd", "--concept", "star", "--out", out, "--steps", "1")
    assert r.exit_code == 0, r.output
    assert out.exists()


@pytest.mark.slow
def test_bench_prints_measured_figures():
    r = run("bench", "--shape", "clip-l", "--steps", "1", "--threads", "1")
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.output.strip().splitlines()]
    data, last = lines[0], lines[-1]
    assert last == {"ratios": {"step_of_matmul_peak": data["matmul_limit_fraction"],
                               "matmul_peak_gflops": data["matmul_peak_gflops"]}}
    assert data["shape"] == "clip-l" and data["steps"] == 1
    assert data["peak_rss_mb"] > data["encoder_mb"] > 400  # CLIP-L text encoder, fp32
    assert 0 < data["patch_fraction"] < 0.1
    assert data["encode_ms_base"] > 0 and data["encode_ms_patched"] > 0
    # a step on CLIP-L with 1 prompt: forward + backward through 12 layers, ~3x the forward's 2 * 123M * tokens
    assert 10 < data["gflop_per_step"] < 1000
    assert data["matmul_peak_gflops"] > 1 and 0 < data["matmul_limit_fraction"] < 2


def test_cost_at_equal_ua_doubles_a_trained_methods_budget_until_it_reaches_hirms_ua(monkeypatch):
    """The search itself, with erasing and scoring faked: ESD reaches HiRM-R's UA at 100 steps; UCE, closed
    form, is timed once whatever its UA; combinations are refused."""
    from hirm import api, bench
    from hirm.errors import HirmError

    calls = []

    def fake_erase(pipe, concept, method="hirm", progress=True, **overrides):
        calls.append((method, overrides.get("steps")))
        time.sleep(0.011)  # above the 0.01 s the rows are rounded to
        return (method, overrides.get("steps"))

    def fake_scores(model, concept, patches, **kw):
        method, steps = patches[0]
        ua = {"hirm": 0.9, "uce": 0.5}.get(method, min(1.0, (steps or 0) / 100))
        return {"ua": ua, "ira": 0.8, "cra": 0.8}

    monkeypatch.setattr(api, "erase", fake_erase)
    monkeypatch.setattr(bench, "evaluate_erasure", fake_scores)
    rows = bench.cost_at_equal_ua("striped", ("esd-x", "uce"))
    assert [c for c in calls if c[0] == "esd-x"] == [("esd-x", s) for s in (25, 50, 100)]
    esd, uce = rows[1], rows[2]
    assert esd["steps"] == 100 and esd["reached"] and esd["ua"] >= rows[0]["ua"]
    assert uce["steps"] is None and not uce["reached"] and ("uce", None) in calls
    assert all({"method", "seconds", "ratio", "ua", "ira", "cra"} <= set(r) for r in rows)
    summary = bench.ratios({}, {"hirm_over_plain": 1.06}, rows)
    assert summary["hirm_process_over_plain_script"] == 1.06
    assert summary["hirm_over_esd-x_at_equal_ua"] == pytest.approx(rows[0]["seconds"] / esd["seconds"], abs=0.01)
    assert "hirm_over_uce" in summary  # UCE short of hirm's UA: its time, not at equal UA
    with pytest.raises(HirmError, match="single methods"):
        bench.cost_at_equal_ua("striped", ("hirm-r+esd-x",))


@pytest.mark.slow
def test_whole_process_times_hirm_against_the_plain_reference(monkeypatch, tmp_path):
    """Both processes run on one tiny pipeline folder, each writes its trained tensors, and the phases add up to
    less than the whole process (the interpreter's own start is outside them)."""
    from safetensors.torch import load_file

    from hirm import bench

    monkeypatch.setitem(bench.SHAPES, "tiny", {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                               "intermediate_size": 64})
    r = bench.whole_process("tiny", steps=2, rounds=1, threads=1, workdir=tmp_path)
    assert len(r["wall_seconds"]["plain"]) == len(r["wall_seconds"]["hirm"]) == 1
    assert r["hirm_over_plain"] == pytest.approx(r["median_seconds"]["hirm"] / r["median_seconds"]["plain"], rel=0.01)
    plain = load_file(str(tmp_path / "plain.safetensors"))
    assert {k.rsplit(".", 2)[0] for k in plain} == {"q_proj", "k_proj", "v_proj", "out_proj"}
    assert (tmp_path / "hirm.safetensors").exists()
    for name in ("plain", "hirm"):
        phases = r["phases"][name]
        assert {"import", "load", "save"} <= set(phases) and all(v >= 0 for v in phases.values())
        assert sum(v for k, v in phases.items() if k != "of which steps") < max(r["wall_seconds"][name]) + 5


def test_whole_process_says_which_process_failed(monkeypatch, tmp_path):
    from hirm import bench
    from hirm.errors import HirmError

    monkeypatch.setitem(bench.SHAPES, "tiny", {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                               "intermediate_size": 64})
    monkeypatch.setattr(bench, "PLAIN_REFERENCE", "import sys; sys.exit('the script broke')")
    with pytest.raises(HirmError, match=r"the plain process failed \(exit 1\): the script broke"):
        bench.whole_process("tiny", steps=1, rounds=1, threads=1, workdir=tmp_path)
