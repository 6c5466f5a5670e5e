"""mini-SD's UNet2DConditionModel on VAE latents, conditioned on the frozen text encoder; its resume state."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from hirm.compat import diffusers_dtype
from hirm.io import atomic_dir, atomic_file
from hirm.minicanvas import registry, world
from hirm.minicanvas.build import training_scheduler
from hirm.minicanvas.classifier import to_tensor
from hirm.minicanvas.tokenizer import load_tokenizer
from hirm.minicanvas.train.loop import (
    resume_with_ema,
    run_loop,
    seed_everything,
    update,
)


def make_unet(latent_channels: int = 8, cross_attention_dim: int = 256):
    from diffusers import UNet2DConditionModel

    # 8x8 latents -> 4x4 -> 2x2; cross-attention on the text at 8x8 and 4x4, as SD attends at its finer levels
    return UNet2DConditionModel(
        sample_size=8, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=(64, 128, 128), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=16,
    )


@torch.no_grad()
def encode_captions(encoder, tokenizer, captions: list[str], batch_size: int = 256) -> torch.Tensor:
    """[N, 77, d] fp16 last hidden states, as the SD pipeline conditions on them."""
    out = []
    for i in tqdm(range(0, len(captions), batch_size), desc="encode captions", mininterval=10):
        ids = tokenizer(captions[i : i + batch_size], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt")["input_ids"]
        out.append(encoder(input_ids=ids.to(encoder.device)).last_hidden_state.half().cpu())
    return torch.cat(out)


@torch.no_grad()
def prepare_generator_data(path: Path, vae, encoder, tokenizer, n: int, seed: int, workers: int = 1) -> None:
    """Render `n` captioned images once (over `workers` processes); store VAE latents and caption encodings
    (fp16) for training. The first n images of a larger set are the n-image set."""
    if path.exists():
        return
    chunks, captions, objects, styles = [], [], [], []
    gen = torch.Generator().manual_seed(seed)
    specs = data_chunks(n, seed)
    for b in tqdm(world.render_batches(specs, workers), total=len(specs), desc="render + encode images",
                  mininterval=10):
        x = to_tensor(b.images).to(vae.device)
        chunks.append(vae.encode(x).latent_dist.sample(generator=gen).half().cpu().contiguous())
        captions += b.captions
        objects.append(torch.as_tensor(b.objects))
        styles.append(torch.as_tensor(b.styles))
    latents = torch.cat(chunks).contiguous()
    tensors = {
        "latents": latents,
        "text": encode_captions(encoder, tokenizer, captions).contiguous(),
        "empty": encode_captions(encoder, tokenizer, [""]),
        "objects": torch.cat(objects),
        "styles": torch.cat(styles),
    }
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"scaling_factor": str(float(1.0 / latents.float().std()))})


def data_chunks(n: int, seed: int) -> list[tuple[int, int]]:
    """(size, seed) of each rendered chunk of a generator training set (shared by mini-SD and mini-Flux)."""
    return [(min(500, n - k), seed * 7919 + k) for k in range(0, n, 500)]



def export_unet_resume_state(run_dir: Path, out: Path) -> Path:
    """The part of a UNet run worth committing to resume it elsewhere: raw weights in fp16 and the counters
    (the EMA weights are the shipped pipeline's UNet; Adam restarts with a short warm-up)."""
    from diffusers import UNet2DConditionModel

    ckpt = run_dir / "checkpoint"
    with atomic_dir(out, replace=True) as tmp:
        UNet2DConditionModel.from_pretrained(ckpt / "unet").half().save_pretrained(tmp / "unet")
        (tmp / "state.json").write_text((ckpt / "state.json").read_text())
    return out


def _init_from_export(init_from: Path, models: dict[str, nn.Module], ema_source: Path) -> None:
    """Seed an empty run dir's models from a committed export (see `export_unet_resume_state`)."""
    from diffusers import UNet2DConditionModel

    models["unet"].load_state_dict(UNet2DConditionModel.from_pretrained(init_from / "unet").float().state_dict())
    models["ema_unet"].load_state_dict(UNet2DConditionModel.from_pretrained(ema_source).float().state_dict())


def train_unet(run_dir: Path, steps: int = 40000, batch_size: int = 128, lr: float = 3e-4, seed: int = 0,
               n_images: int = 80000, caption_dropout: float = 0.1, ema_decay: float = 0.999,
               save_every: int = 250, components: Path | None = None, init_from: Path | None = None,
               device: str = "cpu", workers: int = 1, time_budget: float | None = None, schedule_start: int = 0):
    """mini-SD: a UNet2DConditionModel on 8x8 VAE latents, conditioned on the frozen text encoder, with
    caption dropout for classifier-free guidance. Trains from a fixed rendered set (latents and caption
    encodings precomputed once: the text encoder would otherwise cost more than the UNet step).

    A fresh `run_dir` starts from the committed export in `init_from` when there is one, so training goes on
    across machines; `schedule_start` restarts the learning-rate schedule at that step (a new phase from a
    committed export, which would otherwise resume near the cosine's floor). `device`, `workers` (rendering
    processes) and `time_budget` are for leased accelerators."""
    from diffusers import AutoencoderKL
    from safetensors import safe_open
    from transformers import CLIPTextModel

    seed_everything(seed)
    components = components or run_dir.parent / "components"
    data_path = run_dir / "data.safetensors"
    if not data_path.exists():  # the VAE and text encoder only encode the rendered set, once
        # fp32 whatever the files hold: shipped components are fp16, and fp16 matmuls on CPU are much slower
        vae = AutoencoderKL.from_pretrained(components / "vae", **diffusers_dtype(torch.float32)).eval().to(device)
        encoder = CLIPTextModel.from_pretrained(components / "text_encoder", torch_dtype=torch.float32)
        prepare_generator_data(data_path, vae, encoder.eval().to(device), load_tokenizer(), n_images, seed, workers)
        del vae, encoder
    data = load_file(str(data_path), device=device)
    with safe_open(str(data_path), "pt") as f:
        scaling = float(f.metadata()["scaling_factor"])
    latents, text, empty = data["latents"], data["text"], data["empty"]
    unet = make_unet(latent_channels=latents.shape[1], cross_attention_dim=text.shape[-1])
    ema_unet = make_unet(latent_channels=latents.shape[1], cross_attention_dim=text.shape[-1])
    unet.to(device)
    ema_unet.to(device).load_state_dict(unet.state_dict())
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    models = {"unet": unet, "ema_unet": ema_unet}
    state, ema = resume_with_ema(run_dir, models, opt, ema_unet, ema_decay, init_from, lambda export: _init_from_export(
        export, models, registry.FOLDERS["minicanvas"] / "unet"))
    scheduler = training_scheduler()
    alphas = scheduler.alphas_cumprod.to(device)

    def step(i: int) -> dict[str, float]:
        # every random draw from one CPU generator per step: the same stream on any device
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        idx = torch.randint(0, len(latents), (batch_size,), generator=g).to(device)
        x0 = latents[idx].float() * scaling
        cond = text[idx].float()
        drop = (torch.rand(batch_size, generator=g) < caption_dropout).to(device)
        cond[drop] = empty.float()
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=g).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        update(loss, unet, opt, ema)
        return {"loss": float(loss.detach()), "batch": batch_size}

    def sync_ema() -> dict:
        ema.copy_to(ema_unet.parameters())
        return {"ema_step": ema.optimization_step, "schedule_start": schedule_start}

    state = run_loop(run_dir, {"unet": unet, "ema_unet": ema_unet}, opt, steps, step, lr, save_every,
                     desc="unet", before_save=sync_ema, warmup=200, state=state, time_budget=time_budget,
                     schedule_start=schedule_start)
    (run_dir / "scaling_factor.txt").write_text(str(scaling))
    return unet, state
