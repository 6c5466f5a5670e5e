"""Sampling from any diffusers text-to-image pipeline with fixed seeds (SD, SDXL, SD3, Flux, MiniCanvas)."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from PIL import Image

from hirm.errors import HirmError


def sample(pipe, prompts: list[str], seed: int = 0, steps: int | None = None, guidance: float | None = None,
           batch_size: int = 16, progress: bool = False) -> list[Image.Image]:
    """One image per prompt; image i uses generator seed `seed + i`, so a prompt's image does not depend on
    the batch it falls in."""
    if not prompts:
        raise HirmError("no prompts to sample")
    params = inspect.signature(pipe.__call__).parameters
    kwargs: dict = {"output_type": "np"}
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    if guidance is not None:
        kwargs["guidance_scale"] = guidance
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=not progress)
    out: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(seed + start + i) for i in range(len(chunk))]
        call = dict(kwargs)
        if "generator" in params:
            call["generator"] = gens
        with torch.no_grad():
            result = pipe(prompt=chunk, **call)
        images = np.asarray(result.images)
        out.extend(Image.fromarray((np.clip(im, 0, 1) * 255).round().astype(np.uint8)) for im in images)
    return out
