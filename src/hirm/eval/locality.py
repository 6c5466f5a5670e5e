"""Representation-space locality: how much a patch moves the final text representation (what the denoiser
attends to) of prompts that name the concept (IN) versus prompts that do not (OUT), per token position."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hirm.encoders import TextEncoder
from hirm.patch import Patch

REGIONS = ("bos", "content", "eos", "padding", "all")


@torch.no_grad()
def final_states(encoder: TextEncoder, prompts: list[str], batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, T, d] last hidden states and [N] EOS positions."""
    states, eos = [], []
    for i in range(0, len(prompts), batch_size):
        ids = encoder.tokenize(prompts[i : i + batch_size], truncate=True)
        states.append(encoder.model(input_ids=ids).last_hidden_state.float().cpu())
        eos.append((ids == encoder.model.config.eos_token_id).int().argmax(-1).cpu())
    return torch.cat(states), torch.cat(eos)


def relative_change(before: torch.Tensor, after: torch.Tensor, eos: torch.Tensor) -> dict[str, np.ndarray]:
    """Per prompt, ||after - before|| / ||before|| averaged over each region of positions."""
    rel = ((after - before).norm(dim=-1) / before.norm(dim=-1).clamp_min(1e-8)).cpu()  # [N, T]
    pos = torch.arange(rel.shape[1])[None, :]
    masks = {
        "bos": pos == 0,
        "content": (pos >= 1) & (pos < eos[:, None]),
        "eos": pos == eos[:, None],
        "padding": pos > eos[:, None],
        "all": torch.ones_like(rel, dtype=torch.bool),
    }
    out = {}
    for name, m in masks.items():
        m = m.expand_as(rel)
        out[name] = ((rel * m).sum(1) / m.sum(1).clamp_min(1)).numpy()
    out["per_position"] = rel.numpy()
    return out


def locality_probe(encoder: TextEncoder, patch: Patch, in_prompts: list[str], out_prompts: list[str]) -> dict[str, Any]:
    """Median relative change per region for IN and OUT prompts, and their ratio (higher = more local). Only the
    patch's edit of `encoder` is applied (a robust patch also edits the denoiser)."""
    prompts = in_prompts + out_prompts
    before, eos = final_states(encoder, prompts)
    with patch.only([encoder.name]).applied([encoder]):
        after, _ = final_states(encoder, prompts)
    change = relative_change(before, after, eos)
    n_in = len(in_prompts)
    summary: dict[str, Any] = {"n_in": n_in, "n_out": len(out_prompts)}
    for region in REGIONS:
        a, b = float(np.median(change[region][:n_in])), float(np.median(change[region][n_in:]))
        summary[region] = {"in": a, "out": b, "ratio": a / b if b > 0 else float("inf")}
    per_pos = change["per_position"]
    upto = int(eos.max()) + 2
    summary["per_position_in"] = [round(float(x), 4) for x in np.median(per_pos[:n_in, :upto], 0)]
    summary["per_position_out"] = [round(float(x), 4) for x in np.median(per_pos[n_in:, :upto], 0)]
    return summary
