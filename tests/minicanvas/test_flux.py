"""mini-Flux building blocks agree with diffusers' FluxPipeline conventions."""

import torch
from diffusers import FluxPipeline

from hirm.minicanvas import flux, world


def test_packing_matches_flux_pipeline():
    x = torch.randn(2, 8, 8, 8)
    assert torch.equal(flux.pack(x), FluxPipeline._pack_latents(x, 2, 8, 8, 8))
    ids = FluxPipeline._prepare_latent_image_ids(2, 8 // 2, 8 // 2, "cpu", torch.float32)
    assert torch.equal(flux.image_ids(8, 8), ids)


def test_t5_tokenizer_knows_every_caption_word():
    tok = flux.make_t5_tokenizer()
    captions = [*world.render_batch(300, seed=2).captions, "a star image in mosaic style"]
    for ids in tok(captions)["input_ids"]:
        assert tok.unk_token_id not in ids and ids[-1] == tok.eos_token_id
        assert len(ids) <= flux.T5_MAX_LENGTH


def test_flow_matching_step_trains_transformer_and_t5():
    tok = flux.make_t5_tokenizer()
    model = flux.FluxTrainer(len(tok))
    ids = tok(["a red star"] * 2, padding="max_length", max_length=flux.T5_MAX_LENGTH, return_tensors="pt")
    loss = flux.flow_matching_loss(model, torch.randn(2, 8, 8, 8), torch.randn(2, 256), ids["input_ids"],
                                   torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.t5.shared.weight.grad is not None and model.transformer.proj_out.weight.grad is not None


def test_teacher_velocity_is_the_flow_velocity_of_an_exact_noise_estimate():
    """A teacher that returns the true noise gives exactly noise - x0, and it is fed the DDPM state of its timestep."""
    from types import SimpleNamespace

    from torch import nn

    from hirm.minicanvas.build import training_scheduler

    alphas = training_scheduler().alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 8, 8, 8, generator=g), torch.randn(4, 8, 8, 8, generator=g)
    seen = {}

    class ExactUNet(nn.Module):  # returns the true noise, records its input
        def forward(self, x, k, encoder_hidden_states):
            seen["x"], seen["k"] = x, k
            return SimpleNamespace(sample=noise)

    teacher = flux.TeacherVelocity(ExactUNet(), alphas)
    k, inside = teacher.snap(torch.tensor([0.001, 0.2, 0.5, 0.99]))
    assert inside.tolist() == [False, True, True, False]
    assert torch.all(teacher.times[1:] > teacher.times[:-1])
    assert abs(teacher.times[k[1]] - 0.2) < 2e-3 and abs(teacher.times[k[2]] - 0.5) < 2e-3
    k = torch.tensor([0, 250, 600, 999])
    t = teacher.times[k].view(-1, 1, 1, 1)
    v = teacher((1 - t) * x0 + t * noise, k, torch.zeros(4, 77, 256))
    torch.testing.assert_close(v, noise - x0, rtol=1e-4, atol=1e-4)
    a = alphas[k].view(-1, 1, 1, 1).float()
    torch.testing.assert_close(seen["x"], a.sqrt() * x0 + (1 - a).sqrt() * noise, rtol=1e-4, atol=1e-4)


def test_train_flux_runs_and_resumes_on_a_small_set(tmp_path):
    """Two steps on a fake mini-SD training set: data prepared from it, checkpoint written, resume continues."""
    import json

    from safetensors.torch import save_file

    from hirm.minicanvas.train import flux as flux_training

    n = 8
    unet_run = tmp_path / "unet"
    unet_run.mkdir()
    save_file({"latents": torch.randn(n, 8, 8, 8).half(), "text": torch.randn(n, 77, 256).half(),
               "empty": torch.randn(1, 77, 256).half()}, str(unet_run / "data.safetensors"),
              metadata={"scaling_factor": "1.0"})
    run = tmp_path / "flux"
    flux_training.train_flux(run, steps=2, batch_size=4, save_every=2, unet_run=unet_run, init_from=None)
    # the third step distills from the shipped mini-SD (its UNet reads the set's caption encodings)
    flux_training.train_flux(run, steps=3, batch_size=4, save_every=1, unet_run=unet_run, init_from=None,
                             distill=0.5)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["ema_step"] == 3 and state["distill"] == 0.5
    # the committed export (raw and EMA weights in fp16 + counters) seeds a fresh run elsewhere, which goes on counting
    export = flux_training.export_flux_resume_state(run, tmp_path / "export")
    elsewhere = tmp_path / "flux-elsewhere"
    # one step at lr 0 from the export: the raw weights stay the export's, and the EMA moves from the export's EMA
    # toward them, so each of its values lies between the two (the shipped model's EMA would not)
    flux_training.train_flux(elsewhere, steps=4, batch_size=4, save_every=1, unet_run=unet_run, init_from=export,
                             lr=0.0)
    from safetensors.torch import load_file

    raw, ema = (load_file(str(export / f"{n}.safetensors")) for n in ("flux", "ema_flux"))
    resumed_raw, resumed_ema = (load_file(str(elsewhere / "checkpoint" / f"{n}.safetensors"))
                                for n in ("flux", "ema_flux"))
    for k in raw:
        r, e = raw[k].float(), ema[k].float()
        assert torch.equal(resumed_raw[k], r)
        assert torch.all(resumed_ema[k] >= torch.minimum(r, e) - 1e-6)
        assert torch.all(resumed_ema[k] <= torch.maximum(r, e) + 1e-6)
    assert json.loads((elsewhere / "checkpoint" / "state.json").read_text())["step"] == 4


def test_assemble_flux_links_mini_sd_parts_and_reloads(tmp_path):
    """A checkpoint becomes a FluxPipeline folder whose CLIP encoder, tokenizer and VAE are mini-SD's (links),
    that reloads with from_pretrained and carries the weights it was built from."""
    import json

    from safetensors.torch import save_model

    from hirm.minicanvas import registry
    from hirm.minicanvas.build import assemble_flux

    trainer = flux.FluxTrainer(len(flux.make_t5_tokenizer()))
    save_model(trainer, str(tmp_path / "ema_flux.safetensors"))
    out = assemble_flux(tmp_path / "ema_flux.safetensors", out=tmp_path / "pipe", records={"flux": {"step": 7}})
    assert all((out / part).is_symlink() for part in ("text_encoder", "tokenizer", "vae"))
    assert (out / "text_encoder").resolve() == (registry.path("minicanvas") / "text_encoder").resolve()
    assert json.loads((out / "training.json").read_text()) == {"flux": {"step": 7}}
    pipe = FluxPipeline.from_pretrained(out, local_files_only=True)
    w = trainer.transformer.proj_out.weight
    torch.testing.assert_close(pipe.transformer.proj_out.weight.float(), w.half().float())
