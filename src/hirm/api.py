"""`hirm.erase`: the erasure entry point with device and precision handled where the model is loaded.

The methods in `hirm.erase` train in float32 on whatever they are given. This layer gives them that: a model
named by path is loaded on `device` (text encoders alone for text-encoder methods; the whole pipeline for methods
that use the denoiser); a pipeline already loaded in float16 / bfloat16 gets float32 copies of its text encoders to
train (fp32 master weights: a CLIP text encoder is small), and the caller's pipeline is left as it was. The patch
it returns holds float32 tensors; `Patch.apply` casts them to the dtype and device of the model it is applied to,
and records the base weights' fingerprints in float16 (float16 and float32 loads) and in bfloat16.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from hirm.encoders import (
    TextEncoder,
    dtype_name,
    find_text_encoders,
    is_path,
    load_pipeline,
    load_text_encoders,
    model_components,
    parse_dtype,
    resolve_device,
    trainable_copies,
)
from hirm.erase import METHODS, method_parts, robust_method
from hirm.errors import HirmError
from hirm.patch import Patch


def erase(model: Any, concept: str | list[str], method: str = "hirm", encoder: str | list[str] | None = None,
          kind: str | None = None, paper_defaults: bool = False, progress: bool = True,
          device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
          robust: bool = False, **overrides: Any) -> Patch:
    """Erase `concept` (or a list of concepts, HiRM only) from `model` and return the patch; `model` is a diffusers
    pipeline (any dtype), a `TextEncoder` list, or a path / cached hub id / MiniCanvas name.

    `device`: where to train ("auto": CUDA, then MPS, then the CPU; None: the CPU for a path, where the encoders
    are for a loaded model). `dtype`: the precision a path is read in ("auto"/None: float32; "float16" reads a
    folder's fp16 variant files). Whatever it is, the trained weights are float32 copies. A patch made from a
    bfloat16 load matches bfloat16 loads only: make patches from float32 or float16 weights.
    Methods that fine-tune through the denoiser (ESD, AdvUnlearn, few-shot) or edit it (UCE, RECE) load the
    whole pipeline in float32; a pipeline given to them must be float32 already.

    `robust`: the robust preset (`hirm.erase.robust_method`): a text-encoder method's patch also edits the
    denoiser's cross-attention where the model has a UNet that edit supports; options given for either half
    ("uce.erase_scale") beat the preset's.

    Other arguments as in `hirm.erase.erase` (method, encoder, kind, paper_defaults, config overrides).
    """
    parts = method_parts(method)
    # the robust preset's denoiser half needs the whole pipeline where the model has a UNet it can edit
    needs_pipeline = any(METHODS[p].takes == "pipeline" for p in parts) or (
        robust and robust_method(method, model_components(model))[0] != method)
    read_as = parse_dtype(dtype) or torch.float32
    target: Any
    if is_path(model):
        where = resolve_device(device) if device is not None else None
        name = model.decode() if isinstance(model, bytes) else model
        if needs_pipeline:
            if read_as != torch.float32:
                raise HirmError(f"{method} trains through the denoiser in float32: drop --dtype "
                                f"{dtype_name(read_as)} (it applies to text-encoder methods such as hirm-r)")
            target = load_pipeline(name, dtype=torch.float32, device=where)
        else:
            loaded = load_text_encoders(name, which=encoder, dtype=read_as, device=where)
            for enc in loaded:  # ours: converted in place
                if next(enc.model.parameters()).dtype != torch.float32:
                    enc.model.float()
            target = loaded
    elif needs_pipeline:
        if device is not None:
            raise HirmError(f"{method} works on the pipeline where it is: move it first (pipe.to(...)) and pass "
                            "no device")
        target = model
    else:
        target = trainable_copies(find_text_encoders(model, which=encoder), device)
    methods = importlib.import_module("hirm.erase")  # the subpackage (the name `hirm.erase` is this function)
    patch = methods.erase(target, concept, method=method, encoder=encoder, kind=kind,
                         paper_defaults=paper_defaults, progress=progress, robust=robust, **overrides)
    return patch.add_bf16_fingerprints(target)


__all__ = ["TextEncoder", "erase"]
