"""Assemble trained MiniCanvas components into the shipped diffusers pipeline folder (fp16 safetensors)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from hirm.io import atomic_dir
from hirm.minicanvas import flux, registry
from hirm.minicanvas.tokenizer import load_tokenizer


def training_scheduler():
    """mini-SD's noise schedule: SD's scaled-linear betas, epsilon prediction."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, prediction_type="epsilon", clip_sample=False)


def inference_scheduler():
    """The shipped mini-SD's sampler: DDIM on the training schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(training_scheduler().config, set_alpha_to_one=False, steps_offset=1)


def assemble_sd(components: Path, unet_checkpoint: Path, scaling_factor: float, out: Path | None = None,
                records: dict | None = None) -> Path:
    """vae + text_encoder (components/) + EMA UNet -> StableDiffusionPipeline folder, weights in fp16."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    out = out or registry.FOLDERS["minicanvas"]
    vae = AutoencoderKL.from_pretrained(components / "vae")
    # shift_factor 0 is what FluxPipeline reads; SD ignores it, so mini-Flux can share this VAE folder
    vae.register_to_config(scaling_factor=scaling_factor, shift_factor=0.0)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel.from_pretrained(components / "text_encoder"),
        tokenizer=load_tokenizer(), unet=UNet2DConditionModel.from_pretrained(unet_checkpoint),
        scheduler=inference_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    with atomic_dir(out, replace=True) as tmp:
        pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        (tmp / "training.json").write_text(json.dumps(records or {}, indent=1))
    return out


def flux_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # plain linear sigmas: mini-Flux was trained on logit-normal timesteps over 16 latent tokens, far from the
    # resolutions Flux's dynamic shift is calibrated for
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


def flux_pipeline(flux_checkpoint: Path):
    """A fp32 FluxPipeline from a FluxTrainer checkpoint (transformer + T5) and mini-SD's CLIP text encoder, its
    tokenizer and VAE: the shipped mini-Flux before it is saved, or a training run's weights to judge."""
    from diffusers import FluxPipeline
    from safetensors.torch import load_model

    t5_tokenizer = flux.make_t5_tokenizer()
    trainer = flux.FluxTrainer(len(t5_tokenizer))
    load_model(trainer, str(flux_checkpoint))
    sd_pipe = registry.load_pipeline("minicanvas")
    return FluxPipeline(scheduler=flux_scheduler(), vae=sd_pipe.vae, text_encoder=sd_pipe.text_encoder,
                        tokenizer=sd_pipe.tokenizer, text_encoder_2=trainer.t5.eval(), tokenizer_2=t5_tokenizer,
                        transformer=trainer.transformer.eval())


def assemble_flux(flux_checkpoint: Path, out: Path | None = None, records: dict | None = None) -> Path:
    """EMA transformer + T5 (a FluxTrainer checkpoint) -> FluxPipeline folder. The CLIP text encoder,
    its tokenizer and the VAE are mini-SD's, linked rather than copied: the same encoder, as in real Flux."""
    out = out or registry.FOLDERS["minicanvas-flux"]
    sd = registry.path("minicanvas")
    pipe = flux_pipeline(flux_checkpoint)
    with atomic_dir(out, replace=True) as tmp:
        pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        for shared in ("text_encoder", "tokenizer", "vae"):
            shutil.rmtree(tmp / shared)
            (tmp / shared).symlink_to(os.path.relpath(sd / shared, out))  # relative: the repo moves as a whole
        (tmp / "training.json").write_text(json.dumps(records or {}, indent=1))
    return out
