"""mini-Flux: FluxTransformer2DModel + T5 by rectified flow on the mini-SD training set; its resume state."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file

from hirm.compat import diffusers_dtype
from hirm.io import atomic_dir, atomic_file
from hirm.minicanvas import flux, registry, world
from hirm.minicanvas.build import training_scheduler
from hirm.minicanvas.tokenizer import load_tokenizer
from hirm.minicanvas.train.loop import (
    resume_with_ema,
    run_loop,
    seed_everything,
    update,
)
from hirm.minicanvas.train.unet import data_chunks


@torch.no_grad()
def prepare_flux_data(path: Path, unet_data: Path, n_images: int, seed: int, workers: int = 1) -> None:
    """Pooled CLIP vectors and T5 token ids for the same rendered set as mini-SD's (whose latents and text
    states it reads: the pooled vector is the text state at the EOS token, as CLIPTextModel.pooler_output)."""
    if path.exists():
        return
    clip_tok, t5_tok = load_tokenizer(), flux.make_t5_tokenizer()
    # the captions of prepare_generator_data, re-drawn from the same seeds
    captions = [c for b in world.render_batches(data_chunks(n_images, seed), workers) for c in b.captions]
    data = load_file(str(unet_data))
    ids = clip_tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    eos = (ids == clip_tok.eos_token_id).int().argmax(-1)
    empty_ids = clip_tok([""], padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    empty_eos = int((empty_ids == clip_tok.eos_token_id).int().argmax(-1))

    def t5(texts: list[str]) -> torch.Tensor:
        return t5_tok(texts, padding="max_length", max_length=flux.T5_MAX_LENGTH, truncation=True,
                      return_tensors="pt")["input_ids"].int()

    tensors = {
        "pooled": data["text"][torch.arange(len(captions)), eos].contiguous(),
        "empty_pooled": data["empty"][0, empty_eos][None].contiguous(),
        "t5_ids": t5(captions),
        "empty_t5_ids": t5([""]),
    }
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp))


def export_flux_resume_state(run_dir: Path, out: Path) -> Path:
    """A run's raw and EMA mini-Flux weights in fp16 and its counters, to resume training on another machine or in
    another session (Adam restarts with a short warm-up). The export may be ahead of the shipped pipeline: a phase
    is committed here before it is good enough to ship."""
    ckpt = run_dir / "checkpoint"
    with atomic_dir(out, replace=True) as tmp:
        for name in ("flux", "ema_flux"):
            save_file({k: v.half().contiguous() for k, v in load_file(str(ckpt / f"{name}.safetensors")).items()},
                      str(tmp / f"{name}.safetensors"))
        (tmp / "state.json").write_text((ckpt / "state.json").read_text())
    return out


def train_flux(run_dir: Path, steps: int = 6000, batch_size: int = 64, lr: float = 3e-4, seed: int = 0,
               caption_dropout: float = 0.1, sequence_dropout: float = 0.0, pooled_dropout: float = 0.0,
               ema_decay: float = 0.999, save_every: int = 250, unet_run: Path | None = None,
               init_from: Path | None = None, device: str = "cpu", workers: int = 1,
               time_budget: float | None = None, distill: float = 0.0, schedule_start: int = 0):
    """mini-Flux: FluxTransformer2DModel + T5 encoder, rectified flow on the mini-SD training set.

    `caption_dropout` drops both conditionings (for true CFG); `sequence_dropout` / `pooled_dropout` drop
    only the T5 sequence / the pooled CLIP vector, shifting how much the model leans on each pathway. A fresh
    `run_dir` starts from the committed export in `init_from` when there is one (its EMA weights, or the shipped
    pipeline's for an export without them).
    `distill` > 0 mixes the shipped mini-SD's velocity into the target (`flux.TeacherVelocity`; 1: the teacher's
    alone), on its caption encodings; `schedule_start` restarts the learning-rate schedule at that step (a new
    phase from a committed export). `device`, `workers` (rendering processes) and `time_budget` are for leased
    accelerators."""
    from safetensors import safe_open

    seed_everything(seed)
    unet_run = unet_run or run_dir.parent / "unet"
    unet_data = unet_run / "data.safetensors"
    if not unet_data.exists():
        raise FileNotFoundError(f"{unet_data}: mini-Flux trains on mini-SD's rendered set; prepare it first")
    with safe_open(str(unet_data), "pt") as f:
        scaling = float(f.metadata()["scaling_factor"])
        latents = f.get_tensor("latents").to(device)
        if distill > 0:  # the teacher's caption encodings (fp16, converted per batch)
            text, empty_text = f.get_tensor("text").to(device), f.get_tensor("empty").to(device)
    prepare_flux_data(run_dir / "data.safetensors", unet_data, len(latents), seed, workers)
    data = load_file(str(run_dir / "data.safetensors"), device=device)
    vocab = len(flux.make_t5_tokenizer())
    model = flux.FluxTrainer(vocab, latent_channels=latents.shape[1], pooled_dim=data["pooled"].shape[-1])
    ema_model = flux.FluxTrainer(vocab, latent_channels=latents.shape[1], pooled_dim=data["pooled"].shape[-1])
    model.to(device)
    ema_model.to(device).load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    models = {"flux": model, "ema_flux": ema_model}

    def seed_from_export(export: Path) -> None:  # the raw weights; the EMA's too, else the shipped model's
        load_model(model, str(export / "flux.safetensors"), strict=True)
        if (export / "ema_flux.safetensors").exists():
            load_model(ema_model, str(export / "ema_flux.safetensors"), strict=True)
            return
        shipped = registry.FOLDERS["minicanvas-flux"]
        ema_model.transformer.load_state_dict(type(ema_model.transformer).from_pretrained(
            shipped / "transformer", **diffusers_dtype(torch.float32)).state_dict())
        ema_model.t5.load_state_dict(type(ema_model.t5).from_pretrained(
            shipped / "text_encoder_2", dtype=torch.float32).state_dict())

    state, ema = resume_with_ema(run_dir, models, opt, ema_model, ema_decay, init_from, seed_from_export)
    teacher = None
    if distill > 0:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(registry.FOLDERS["minicanvas"] / "unet",
                                                    **diffusers_dtype(torch.float32)).to(device)
        teacher = flux.TeacherVelocity(unet, training_scheduler().alphas_cumprod)

    def step(i: int) -> dict[str, float]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        idx = torch.randint(0, len(latents), (batch_size,), generator=g).to(device)
        x0 = latents[idx].float() * scaling
        pooled = data["pooled"][idx].float()
        ids = data["t5_ids"][idx].long()
        r = torch.rand(batch_size, generator=g)
        drop_all = r < caption_dropout
        drop_seq = drop_all | ((r >= caption_dropout) & (torch.rand(batch_size, generator=g) < sequence_dropout))
        drop_pool = drop_all | ((r >= caption_dropout) & (torch.rand(batch_size, generator=g) < pooled_dropout))
        drop_seq, drop_pool = drop_seq.to(device), drop_pool.to(device)
        ids[drop_seq] = data["empty_t5_ids"].long()
        pooled[drop_pool] = data["empty_pooled"].float()
        if teacher is None:
            loss = flux.flow_matching_loss(model, x0, pooled, ids, g)
        else:  # the teacher sees the caption unless both conditionings were dropped
            cond = text[idx].float()
            cond[drop_all.to(device)] = empty_text.float()
            loss = flux.flow_matching_loss(model, x0, pooled, ids, g, teacher, cond, distill)
        update(loss, model, opt, ema)
        return {"loss": float(loss.detach()), "batch": batch_size}

    def sync_ema() -> dict:
        ema.copy_to(ema_model.parameters())
        return {"ema_step": ema.optimization_step, "scaling_factor": scaling,
                "sequence_dropout": sequence_dropout, "pooled_dropout": pooled_dropout, "distill": distill,
                "schedule_start": schedule_start}

    return run_loop(run_dir, models, opt, steps, step, lr, save_every, desc="flux", before_save=sync_ema,
                    warmup=200, state=state, time_budget=time_budget, schedule_start=schedule_start)
