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
        kwargs["guidance_scale"] = guidance
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    out: list[Image.Image] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="sampling", disable=not progress or len(starts) < 2, leave=False):
        chunk = prompts[start : start + batch_size]
        call = dict(kwargs)
        if "generator" in params:
            chunk_seeds = seeds[start : start + len(chunk)]
            call["generator"] = [torch.Generator(device="cpu").manual_seed(s) for s in chunk_seeds]
        with torch.no_grad():
            result = pipe(prompt=chunk, **call)
        images = np.asarray(result.images)
        out.extend(Image.fromarray((np.clip(im, 0, 1) * 255).round().astype(np.uint8)) for im in images)
    return out
