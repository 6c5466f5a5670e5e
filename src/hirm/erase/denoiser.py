"""What every denoiser erasure shares: checking the pipeline, encoding prompts and images, naming the
denoiser's parameter groups, SD's denoising loss, and sampling a partly denoised latent.

Closed-form methods (UCE, RECE) work on Stable-Diffusion-style pipelines: a `UNet2DConditionModel` conditioned
by cross attention on one text encoder's hidden states (SD 1.x / 2.x, and the MiniCanvas mini-SD). Trained
methods (ESD) go through `Denoiser`, which also covers Flux's flow-matching transformer (real Flux, mini-Flux):
the same loss on velocities instead of noise predictions.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from hirm.errors import HirmError
from hirm.minicanvas import world
from hirm.minicanvas.classifier import to_tensor
from hirm.minicanvas.world import concept_domain

# ESD's parameter groups (train-esd.py's `train_method`), in diffusers' UNet names
GROUPS = ("xattn", "noxattn", "selfattn", "full")


def is_unet_pipeline(components: Collection[str]) -> bool:
    """Whether a pipeline with these components is one the closed forms edit: a unet and one text_encoder."""
    return "unet" in components and "text_encoder" in components and "text_encoder_2" not in components


def require_unet_pipeline(pipe, method: str) -> None:
    present = [n for n in ("unet", "text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]
    if not is_unet_pipeline(present) or hasattr(pipe, "text_encoder_2"):
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
def image_latents(pipe, pixels: torch.Tensor) -> torch.Tensor:
    """VAE latents, scaled as the UNet sees them, of images in [-1, 1] ([N, 3, H, W])."""
    return pipe.vae.encode(pixels.to(pipe.vae.dtype)).latent_dist.mean * pipe.vae.config.scaling_factor


def concept_latents(pipe, concept: str, n: int, seed: int) -> torch.Tensor:
    """`image_latents` of `n` rendered MiniCanvas images of the concept (random colour, size, background and
    other-domain concept)."""
    domain, index = concept_domain(concept)
    return image_latents(pipe, to_tensor(world.render_batch(n, seed=seed, **{domain: index}).images) * 2 - 1)


def denoising_loss(pipe, ids: torch.Tensor, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SD's training loss on `latents` conditioned on `ids` (epsilon prediction, a random timestep each)."""
    t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    noisy = pipe.scheduler.add_noise(latents, noise, t)
    cond = pipe.text_encoder(input_ids=ids)[0]
    return torch.nn.functional.mse_loss(pipe.unet(noisy, t, encoder_hidden_states=cond).sample, noise)


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


# ------------------------------------------------------------------------------ any trained denoiser


def transformer_parameter_names(transformer: torch.nn.Module, group: str) -> list[str]:
    """ESD's groups on a Flux transformer. Its text and image tokens meet in the joint attention of the
    double-stream blocks, the counterpart of a UNet's cross-attention: `xattn` is that attention; `noxattn`
    everything else but the time / text embedders and the output projection; `selfattn` the single-stream
    blocks' attention; `full`."""
    if group not in GROUPS:
        raise HirmError(f"transformer parameter group {group!r}: use one of {', '.join(GROUPS)}")
    joint = lambda n: n.startswith("transformer_blocks.") and ".attn." in n  # noqa: E731
    in_group = {
        "xattn": joint,
        "noxattn": lambda n: not (joint(n) or n.startswith(("time_text_embed.", "context_embedder.", "proj_out."))),
        "selfattn": lambda n: n.startswith("single_transformer_blocks.") and ".attn." in n,
        "full": lambda n: True,
    }[group]
    return [name for name, _ in transformer.named_parameters() if in_group(name)]


@dataclass
class Denoiser:
    """A pipeline's denoiser seen the same way by every trained denoiser eraser: `name` is its component
    (`unet` or `transformer`), `predict` its noise (UNet) or velocity (Flux) prediction for a conditioning
    from `condition`, and `partly_denoised` ESD's training sample (z_t, t) drawn with classifier-free guidance.
    """

    pipe: Any
    name: str

    @property
    def module(self) -> torch.nn.Module:
        return getattr(self.pipe, self.name)

    @property
    def _latent_side(self) -> int:
        """Flux: packed latent tokens per side, for the pipeline's own image size (as hirm.generate samples
        transformer pipelines: the VAE's sample size)."""
        return int(self.pipe.vae.config.sample_size) // self.pipe.vae_scale_factor // 2

    @cached_property
    def _image_ids(self) -> torch.Tensor:
        """Flux: the positions of the latent's tokens (what FluxPipeline.prepare_latents returns with them)."""
        side = self._latent_side
        return self.pipe._prepare_latent_image_ids(1, side, side, self.module.device, torch.float32)

    def parameter_names(self, group: str) -> list[str]:
        if self.name == "unet":
            return unet_parameter_names(self.module, group)
        return transformer_parameter_names(self.module, group)

    @torch.no_grad()
    def condition(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        if self.name == "unet":
            return {"encoder_hidden_states": encode(self.pipe, prompts)}
        t5 = getattr(self.pipe, "tokenizer_2", None)
        embeds, pooled, text_ids = self.pipe.encode_prompt(
            prompts, prompt_2=None, device=self.module.device,
            max_sequence_length=min(512, int(getattr(t5, "model_max_length", 512))))  # as hirm.generate samples
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids}

    def predict(self, z: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.name == "unet":
            return self.module(z, t, **cond).sample
        config = self.module.config
        guidance = torch.full((z.shape[0],), 1.0) if config.guidance_embeds else None  # Flux-dev: no extra push
        return self.module(hidden_states=z, timestep=t / 1000, guidance=guidance, img_ids=self._image_ids,
                           return_dict=False, **cond)[0]

    @torch.no_grad()
    def partly_denoised(self, cond: dict[str, torch.Tensor], uncond: dict[str, torch.Tensor], steps: int,
                        guidance: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A random stop among `steps` sampler steps, the latent the (trained) denoiser draws up to there with
        classifier-free guidance, and a timestep t for it. Returns (z_t, t)."""
        if self.name == "unet":
            return partly_denoised(self.pipe, self.module, cond["encoder_hidden_states"],
                                   uncond["encoder_hidden_states"], steps, guidance, generator)
        scheduler = self._flow_scheduler(steps)
        stop = int(torch.randint(0, steps, (1,), generator=generator))
        z = self._initial_latents(generator)
        for t in scheduler.timesteps[:stop]:
            v_u, v_c = self.predict(z, t[None], uncond), self.predict(z, t[None], cond)
            z = scheduler.step(v_u + guidance * (v_c - v_u), t, z).prev_sample
        return z, scheduler.timesteps[stop][None]

    def _initial_latents(self, generator: torch.Generator) -> torch.Tensor:
        pixels = 2 * self._latent_side * self.pipe.vae_scale_factor
        channels = self.module.config.in_channels // 4
        z, _ = self.pipe.prepare_latents(1, channels, pixels, pixels, torch.float32, self.module.device, generator)
        return z

    def _flow_scheduler(self, steps: int):
        """The pipeline's flow-matching schedule for `steps` steps, shifted as FluxPipeline shifts it."""
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        c = scheduler.config
        mu = calculate_shift(self._latent_side**2, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        return scheduler


def denoiser(pipe, method: str) -> Denoiser:
    """The denoiser of an SD-1.x/2.x-style pipeline (UNet + one text encoder) or of a Flux pipeline."""
    if getattr(pipe, "unet", None) is not None:
        require_unet_pipeline(pipe, method)
        return Denoiser(pipe, "unet")
    if type(getattr(pipe, "transformer", None)).__name__ == "FluxTransformer2DModel":
        return Denoiser(pipe, "transformer")
    raise HirmError(f"{method} edits the UNet of an SD-1.x/2.x-style pipeline or the transformer of a Flux "
                    f"pipeline; {type(pipe).__name__} is neither: use a hirm-* method for it")
