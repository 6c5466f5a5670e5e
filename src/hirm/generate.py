"""Sampling from any diffusers text-to-image pipeline with fixed seeds (SD, SDXL, SD3, Flux, MiniCanvas)."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from hirm.errors import HirmError


def sample(pipe, prompts: list[str], seed: int = 0, steps: int | None = None, guidance: float | None = None,
           batch_size: int = 32, seeds: list[int] | None = None, progress: bool = False) -> list[Image.Image]:
    """One image per prompt. Image i uses generator seed `seeds[i]` (default `seed + i`), so an image does not
    depend on the batch it falls in."""
    if not prompts:
        raise HirmError("no prompts to sample")
    seeds = list(seeds) if seeds is not None else [seed + i for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise HirmError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    params = inspect.signature(pipe.__call__).parameters
    kwargs: dict = {"output_type": "np"}
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    if guidance is not None:
        kwargs.update(_guidance_kwargs(pipe, params, guidance))
    size = getattr(getattr(getattr(pipe, "vae", None), "config", None), "sample_size", None)
    if "height" in params and getattr(pipe, "unet", None) is None and isinstance(size, int):
        # transformer pipelines (Flux, SD3) default to a fixed 1024 / 128-latent size; the VAE's sample size is
        # the model's own (1024 for the real ones, 32 for mini-Flux). UNet pipelines already read theirs.
        kwargs["height"] = kwargs["width"] = size
    t5 = next((t for t in (getattr(pipe, "tokenizer_3", None), getattr(pipe, "tokenizer_2", None))
               if t is not None and "T5" in type(t).__name__), None)
    if "max_sequence_length" in params and t5 is not None:
        # Flux / SD3 pad the T5 sequence to this length (512 / 256) and Flux has no attention mask: a model
        # trained on shorter sequences (mini-Flux: 24) must be sampled at its tokenizer's length
        kwargs["max_sequence_length"] = min(params["max_sequence_length"].default, int(t5.model_max_length))
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    out: list[Image.Image] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="sampling", disable=not progress or len(starts) < 2, leave=False):
        chunk = prompts[start : start + batch_size]
        call = dict(kwargs)
        if "true_cfg_scale" in call:
            call["negative_prompt"] = [""] * len(chunk)
        if "generator" in params:
            chunk_seeds = seeds[start : start + len(chunk)]
            call["generator"] = [torch.Generator(device="cpu").manual_seed(s) for s in chunk_seeds]
        with torch.no_grad():
            result = pipe(prompt=chunk, **call)
        images = np.asarray(result.images)
        out.extend(Image.fromarray((np.clip(im, 0, 1) * 255).round().astype(np.uint8)) for im in images)
    return out


def _guidance_kwargs(pipe, params, guidance: float) -> dict:
    """Classifier-free guidance at `guidance`. A Flux transformer without a guidance embedding (Flux-schnell,
    mini-Flux) gets true CFG against the empty prompt; everything else takes `guidance_scale` (for Flux-dev
    that is its distilled guidance embedding)."""
    transformer = getattr(pipe, "transformer", None)
    if "true_cfg_scale" in params and not getattr(getattr(transformer, "config", None), "guidance_embeds", True):
        return {"true_cfg_scale": guidance}
    return {"guidance_scale": guidance}
