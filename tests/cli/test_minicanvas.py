"""`hirm eval` and `hirm demo` end to end on the shipped MiniCanvas models."""

import json

import pytest
from typer.testing import CliRunner

from hirm.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_eval_json_and_erasure_effect(tmp_path):
    patch = tmp_path / "star.safetensors"
    # 50 steps: this test is about eval; the demo test below runs the default recipe end to end
    r = runner.invoke(app, ["erase", "--model", "minicanvas", "--concept", "star", "--steps", "50",
                            "--out", str(patch)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", "--model", "minicanvas", "--patch", str(patch), "--seeds", "0", "--base",
                            "--probe", "--json", "--out", str(tmp_path / "eval")])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("ua", "ira", "cra", "n_images", "seconds", "per_object", "per_style", "base", "probe"):
        assert key in data
    assert data["concept"] == "star" and data["n_images"] == 120
    assert all(0.0 <= data[k] <= 1.0 for k in ("ua", "ira", "cra"))
    assert data["ua"] > data["base"]["ua"]  # the patch removes stars the base model draws
    assert (tmp_path / "eval" / "grid-patched.png").exists() and (tmp_path / "eval" / "metrics.json").exists()
    # the patch made on mini-SD's encoder applies unchanged to mini-Flux, which shares it
    r = runner.invoke(app, ["eval", "--model", "minicanvas-flux", "--patch", str(patch), "--seeds", "0", "--base",
                            "--json"])
    assert r.exit_code == 0, r.output
    flux = json.loads(r.stdout.strip().splitlines()[-1])
    assert flux["model"] == "minicanvas-flux" and flux["n_images"] == 120
    assert all(0.0 <= flux[k] <= 1.0 for k in ("ua", "ira", "cra")) and flux["patches"] == data["patches"]


def test_eval_of_a_patch_of_several_concepts(tmp_path):
    patch = tmp_path / "two.safetensors"
    r = runner.invoke(app, ["erase", "--model", "minicanvas", "--concept", "star", "--concept", "striped",
                            "--steps", "3", "--out", str(patch)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", "--model", "minicanvas", "--patch", str(patch), "--seeds", "0", "--steps", "4",
                            "--json"])
    assert r.exit_code == 0, r.output
    erased = json.loads(r.stdout.strip().splitlines()[-1])["erased"]
    assert erased["concepts"] == ["star", "striped"] and set(erased["ua_per_concept"]) == {"star", "striped"}
    assert 0.0 <= erased["kept_acc"] <= 1.0 and "circle" in erased["kept_per_concept"]


def test_eval_rejects_unknown_concept_and_model():
    r = runner.invoke(app, ["eval", "--model", "minicanvas", "--concept", "teapot"])
    assert r.exit_code == 2 and "not a MiniCanvas concept" in r.output
    r = runner.invoke(app, ["eval", "--model", "some/other", "--concept", "star"])
    assert r.exit_code == 2 and "scores MiniCanvas models" in r.output


@pytest.mark.slow
def test_demo_writes_report_grid_and_patch(tmp_path):
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--out", str(out)])
    assert r.exit_code == 0, r.output
    for name in ("report.md", "before-after.png", "grid-base.png", "grid-patched.png", "metrics.json",
                 "star.safetensors"):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    assert "| patched |" in report
    # the same patch, unchanged, on mini-Flux (which shares mini-SD's CLIP encoder)
    assert "## minicanvas-flux" in report and (out / "minicanvas-flux" / "before-after.png").exists()


def test_build_flux_no_ship_writes_only_the_resume_state(tmp_path):
    """`build flux --no-ship` commits a training phase (raw + EMA weights, counters) without touching the shipped
    pipeline; mini-SD has no such mode and says so."""
    from safetensors.torch import save_model

    from hirm.minicanvas import flux

    ckpt = tmp_path / "run" / "checkpoint"
    ckpt.mkdir(parents=True)
    for name in ("flux", "ema_flux"):
        save_model(flux.FluxTrainer(len(flux.make_t5_tokenizer())), str(ckpt / f"{name}.safetensors"))
    (ckpt / "state.json").write_text(json.dumps({"step": 5, "seconds": 1.0, "images_seen": 20, "ema_step": 5}))
    out = tmp_path / "resume"
    r = runner.invoke(app, ["minicanvas", "build", "flux", "--run-dir", str(tmp_path / "run"), "--resume-state",
                            str(out), "--no-ship"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["ema_flux.safetensors", "flux.safetensors", "state.json"]
    assert json.loads((out / "state.json").read_text())["step"] == 5
    r = runner.invoke(app, ["minicanvas", "build", "sd", "--run-dir", str(tmp_path / "run"), "--no-ship"])
    assert r.exit_code != 0 and "--no-ship is for flux" in r.output
