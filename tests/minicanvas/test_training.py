"""Training loops: resumable (a killed run resumes to the same weights), seeded, safetensors only."""

import json
import time
from pathlib import Path

import pytest
import torch

from hirm.minicanvas import train
from hirm.minicanvas.train import loop, text
from hirm.minicanvas.train import vae as vae_training
from hirm.registry import Entry


def _weights(path):
    from hirm.minicanvas.classifier import MiniCanvasClassifier

    return MiniCanvasClassifier.from_pretrained(path / "checkpoint" / "classifier").state_dict()


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train.train_classifier(straight, steps=4, batch_size=8, save_every=2)
    train.train_classifier(resumed, steps=2, batch_size=8, save_every=2)  # "killed" after step 2
    assert json.loads((resumed / "checkpoint" / "state.json").read_text())["step"] == 2
    train.train_classifier(resumed, steps=4, batch_size=8, save_every=2)
    a, b = _weights(straight), _weights(resumed)
    # same batches (seeded by step), same optimizer state restored from safetensors
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert not list((resumed / "checkpoint").glob("*.pt")) and not list((resumed / "checkpoint").glob("*.bin"))


def test_multi_positive_nce_prefers_matching_pairs():
    pos = torch.eye(4, dtype=torch.bool)
    good = text.multi_positive_nce(10 * torch.eye(4), pos)
    bad = text.multi_positive_nce(10 * (1 - torch.eye(4)), pos)
    assert good < 0.01 < bad


def test_compatibility_uses_only_mentioned_attributes():
    from hirm.minicanvas import world

    b = world.render_batch(64, seed=3)
    ok = text.compatibility(b)
    assert ok.diagonal().all()
    labels = b.labels()
    for i, names in enumerate(b.mentioned):
        if names == {"object"}:
            assert torch.equal(ok[i], torch.as_tensor(labels["object"] == labels["object"][i]))


def test_vae_decoder_finetune_keeps_the_encoder(tmp_path, monkeypatch):
    monkeypatch.setattr(vae_training, "evaluate_vae", lambda vae: {})  # the judge's evaluation is minutes; not here
    init = tmp_path / "init"
    vae_training.make_vae().save_pretrained(init)
    vae = train.train_vae_decoder(tmp_path / "run", steps=2, batch_size=4, init=init, save_every=2)
    from diffusers import AutoencoderKL

    before = AutoencoderKL.from_pretrained(init).state_dict()
    after = vae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))



class FakeClock:
    """time.time() that moves `per_step` seconds per call, `slow` seconds per call after `slow_after` calls."""

    def __init__(self, per_step: float, slow: float | None = None, slow_after: int = 0):
        self.now, self.calls, self.per_step, self.slow, self.slow_after = 1000.0, 0, per_step, slow, slow_after

    def __call__(self) -> float:
        self.calls += 1
        self.now += self.slow if self.slow is not None and self.calls > self.slow_after else self.per_step
        return self.now


def run_recording_lr(run_dir, total_steps: int, **run_loop_kwargs) -> tuple[loop.RunState, list[float]]:
    """`run_loop` (base lr 0.1, warm-up 10) on a tiny model whose step only records the lr it ran at."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lrs = []

    def step(i):
        lrs.append(opt.param_groups[0]["lr"])
        return {"batch": 1}

    state = loop.run_loop(run_dir, {"m": model}, opt, total_steps, step, base_lr=0.1, save_every=10_000,
                          warmup=10, **run_loop_kwargs)
    return state, lrs


@pytest.mark.parametrize(("clock", "expected"), [
    (FakeClock(0.005), range(195, 201)),  # measured at step 100: 0.5 s left / 5 ms = 100 more steps
    (FakeClock(0.005, slow=0.02, slow_after=101), range(126, 131)),  # 4x slower after the measurement: hard stop
])
def test_time_budget_fits_the_schedule_and_stops_the_run(tmp_path, monkeypatch, clock, expected):
    """A run with a time budget shortens its cosine schedule to what fits, stops at 1.05 x the budget whatever
    the schedule, and saves where it stops."""
    monkeypatch.setattr(time, "time", clock)
    state, lrs = run_recording_lr(tmp_path, 1_000_000, time_budget=1.0)
    assert state.step in expected
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == state.step
    if expected.start > 150:
        assert lrs[-1] < 0.1 * max(lrs)  # the schedule ran to its end within the budget


def test_schedule_start_restarts_warmup_and_cosine(tmp_path):
    """A phase resumed at step 500 of a 1,000-step schedule runs at the cosine's middle; with schedule_start=500
    it warms up from zero and decays over the remaining steps instead."""
    continued, restarted = (run_recording_lr(tmp_path / str(start), 1000, state=loop.RunState(step=500),
                                             schedule_start=start)[1] for start in (0, 500))
    assert len(continued) == len(restarted) == 500
    assert continued[0] == pytest.approx(loop.cosine_lr(500, 1000, 0.1, warmup=10))
    assert restarted[0] == pytest.approx(0.1 / 10)  # the warm-up's first step
    assert restarted[9] == pytest.approx(0.1) and restarted[9] > max(continued)  # the base rate after warm-up
    assert restarted[-1] < 0.1 * 0.06  # and down to the cosine's floor by the end


def test_unet_run_encodes_its_set_once(tmp_path, monkeypatch):
    import diffusers

    from hirm.minicanvas import registry

    run = tmp_path / "unet"
    shipped = registry.path("minicanvas")
    train.train_unet(run, steps=1, batch_size=2, n_images=4, save_every=1, components=shipped, init_from=None)
    assert (run / "data.safetensors").exists()

    def no_vae(*a, **k):
        raise AssertionError("the rendered set is already encoded: the VAE is not needed")

    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", no_vae)
    _, state = train.train_unet(run, steps=2, batch_size=2, n_images=4, save_every=1, components=shipped,
                                   init_from=None)
    assert state.step == 2


def test_train_command_passes_trainer_options_and_refuses_unknown_ones(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hirm.cli import app

    seen = {}
    def fake_unet(run_dir, steps=1, lr=1.0, init_from=None, device="cpu"):
        seen.update(run_dir=run_dir, steps=steps, lr=lr, init_from=init_from, device=device)

    monkeypatch.setitem(train.TRAINERS, "unet", Entry("unet", None, fake_unet, "a stand-in"))
    monkeypatch.chdir(tmp_path)  # no training/ folder here: a fresh run starts from nothing, not the package's
    runner = CliRunner()
    r = runner.invoke(app, ["minicanvas", "train", "unet", "--run-dir", "r", "--steps", "3", "--set", "lr=1e-4"])
    assert r.exit_code == 0, r.output
    assert seen == {"run_dir": Path("r"), "steps": 3, "lr": 1e-4,
                    "init_from": None, "device": "cpu"}
    (tmp_path / "training" / "minicanvas-sd-unet").mkdir(parents=True)
    (tmp_path / "training" / "minicanvas-sd-unet" / "state.json").write_text("{}")
    assert runner.invoke(app, ["minicanvas", "train", "unet", "--run-dir", "r"]).exit_code == 0
    assert seen["init_from"] == train.RESUME_STATE["unet"]  # the checkout's committed state, where it exists
    r = runner.invoke(app, ["minicanvas", "train", "unet", "--run-dir", "r", "--workers", "4"])
    assert r.exit_code == 2
    assert "trainer unet has no option 'workers'; options: device, init_from, lr, steps" in r.output
    r = runner.invoke(app, ["minicanvas", "train", "unet2", "--run-dir", "r"])
    assert r.exit_code == 2 and "unknown trainer 'unet2'; available: classifier, vae" in r.output
