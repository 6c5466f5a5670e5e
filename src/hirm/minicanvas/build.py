"""Assemble trained MiniCanvas components into the shipped diffusers pipeline folder (fp16 safetensors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from hirm.minicanvas import registry
from hirm.minicanvas.tokenizer import load_tokenizer

SAMPLING = registry.SAMPLING["minicanvas"]


def inference_scheduler():
    from diffusers import DDIMScheduler

    from hirm.minicanvas.training import make_scheduler

    return DDIMScheduler.from_config(make_scheduler().config, set_alpha_to_one=False, steps_offset=1)


def assemble_sd(components: Path, unet_checkpoint: Path, scaling_factor: float, out: Path | None = None,
                records: dict | None = None) -> Path:
    """vae + text_encoder (components/) + EMA UNet -> StableDiffusionPipeline folder, weights in fp16."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    out = out or registry.FOLDERS["minicanvas"]
    vae = AutoencoderKL.from_pretrained(components / "vae")
    vae.register_to_config(scaling_factor=scaling_factor)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel.from_pretrained(components / "text_encoder"),
        tokenizer=load_tokenizer(), unet=UNet2DConditionModel.from_pretrained(unet_checkpoint),
        scheduler=inference_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    (tmp / "training.json").write_text(json.dumps(records or {}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
