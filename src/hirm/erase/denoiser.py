"""What every denoiser (UNet) erasure shares: checking the pipeline, encoding prompts, naming the UNet's
parameter groups, and sampling a partly denoised latent.

Denoiser methods work on Stable-Diffusion-style pipelines: a `UNet2DConditionModel` conditioned by cross
attention on one text encoder's hidden states (SD 1.x / 2.x, and the MiniCanvas mini-SD).
"""

from __future__ import annotations

import torch

from hirm.errors import HirmError

# ESD's parameter groups (train-esd.py's `train_method`), in diffusers' UNet names
GROUPS = ("xattn", "noxattn", "selfattn", "full")


def require_unet_pipeline(pipe, method: str) -> None:
    unet = getattr(pipe, "unet", None)
    if unet is None or getattr(pipe, "text_encoder", None) is None or hasattr(pipe, "text_encoder_2"):
        raise HirmError(f"{method} edits the UNet of a Stable-Diffusion-1.x/2.x-style pipeline (unet + one "
                        f"text_encoder); {type(pipe).__name__} is not one: use a hirm-* method for it")


def unet_parameter_names(unet: torch.nn.Module, group: str) -> list[str]:
    """ESD's groups: `xattn` cross-attention only; `noxattn` everything but cross-attention, the time
    embedding and the output convolution; `selfattn`; `full`."""
    if group not in GROUPS:
        raise HirmError(f"UNet parameter group {group!r}: use one of {', '.join(GROUPS)}")
    in_group = {
        "xattn": lambda n: ".attn2." in n,
        "noxattn": lambda n: not (".attn2." in n or "time_embed" in n or n.startswith("conv_out")),
        "selfattn": lambda n: ".attn1." in n,
        "full": lambda n: True,
    }[group]
    return [name for name, _ in unet.named_parameters() if in_group(name)]


def cross_attention_projections(unet: torch.nn.Module, keys: bool = True) -> dict[str, torch.nn.Linear]:
    """Parameter name -> Linear of every cross-attention value (and key) projection, the text's way in."""
    out = {}
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_v") or (keys and name.endswith("attn2.to_k")):
            out[f"{name}.weight"] = module
    if not out:
        raise HirmError("this UNet has no cross-attention (attn2) projections to edit")
    return out


@torch.no_grad()
def encode(pipe, prompts: list[str]) -> torch.Tensor:
    """The text encoder's last hidden states for `prompts`, padded to full length (what the UNet sees)."""
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0]


def last_token_index(pipe, prompt: str) -> int:
    """Index of the prompt's last word token (before EOS), as UCE aligns embeddings."""
    return len(pipe.tokenizer(prompt)["input_ids"]) - 2


def latent_shape(pipe, batch: int = 1) -> tuple[int, ...]:
    unet = pipe.unet
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    return (batch, unet.config.in_channels, size, size)


@torch.no_grad()
def denoise_until(pipe, unet: torch.nn.Module, cond: torch.Tensor, uncond: torch.Tensor, stop: int, steps: int,
                  guidance: float, generator: torch.Generator) -> torch.Tensor:
    """Run `stop` of `steps` DDIM steps from noise with classifier-free guidance (ESD's quick_sample_till_t)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    latents = torch.randn(latent_shape(pipe, cond.shape[0]), generator=generator) * scheduler.init_noise_sigma
    context = torch.cat([uncond.expand_as(cond), cond])
    for t in scheduler.timesteps[:stop]:
        e_u, e_c = unet(torch.cat([latents] * 2), t, encoder_hidden_states=context).sample.chunk(2)
        latents = scheduler.step(e_u + guidance * (e_c - e_u), t, latents).prev_sample
    return latents


@torch.no_grad()
def partly_denoised(pipe, unet: torch.nn.Module, cond: torch.Tensor, uncond: torch.Tensor, ddim_steps: int,
                    guidance: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ESD's training sample: a random stop among `ddim_steps` DDIM steps, the latent `unet` draws up to there,
    and a training timestep t inside that DDIM step's span. Returns (z_t, t)."""
    n_train = pipe.scheduler.config.num_train_timesteps
    stop = int(torch.randint(0, ddim_steps, (1,), generator=generator))
    lo, hi = round(stop / ddim_steps * n_train), round((stop + 1) / ddim_steps * n_train)
    t = torch.randint(lo, max(hi, lo + 1), (1,), generator=generator)
    return denoise_until(pipe, unet, cond, uncond, stop, ddim_steps, guidance, generator), t
