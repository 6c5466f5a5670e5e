"""Where a prompt reaches a Flux-architecture model: the pooled CLIP vector or the T5 token sequence.

Flux conditions on both: CLIP-L's pooled vector modulates every block (adaLN) and T5's sequence is attended to.
A patch on the CLIP encoder changes only the first pathway, so how much of a concept travels through each
decides whether a CLIP patch made on SD transfers to Flux. `ablate` replaces one pathway with the empty
prompt's (what the model saw for dropped captions in training) while the other carries the prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from hirm.encoders import T5_MAX_LENGTH
from hirm.errors import HirmError
from hirm.eval.minicanvas import generate_grid, score

PATHWAYS = ("both", "pooled", "sequence")  # what carries the prompt: both, only CLIP's pooled vector, only T5's


def _require_flux(pipe) -> None:
    if not (hasattr(pipe, "transformer") and getattr(pipe, "text_encoder_2", None) is not None):
        raise HirmError(f"{type(pipe).__name__} is not a Flux-architecture pipeline (CLIP pooled + T5 sequence)")


@torch.no_grad()
def _empty_outputs(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    """The empty prompt's pooled CLIP vector and T5 sequence, as the pipeline computes them."""
    clip_ids = pipe.tokenizer([""], padding="max_length", max_length=pipe.tokenizer_max_length, truncation=True,
                              return_tensors="pt").input_ids
    pooled = pipe.text_encoder(clip_ids, output_hidden_states=False).pooler_output
    length = min(T5_MAX_LENGTH, pipe.tokenizer_2.model_max_length)
    t5_ids = pipe.tokenizer_2([""], padding="max_length", max_length=length, truncation=True,
                              return_tensors="pt").input_ids
    return pooled, pipe.text_encoder_2(t5_ids)[0]


@contextmanager
def ablate(pipe, keep: str) -> Iterator[None]:
    """Within the block, only the `keep` pathway ("both", "pooled" or "sequence") carries the prompt; the
    other gets the empty prompt's encoding (broadcast over the batch and, for T5, over any padded length)."""
    _require_flux(pipe)
    if keep not in PATHWAYS:
        raise HirmError(f"pathway {keep!r}: use one of {', '.join(PATHWAYS)}")
    if keep == "both":
        yield
        return
    empty_pooled, empty_seq = _empty_outputs(pipe)

    def blank_pooled(_m, _inp, out):
        out.pooler_output = empty_pooled.to(out.pooler_output.dtype).expand_as(out.pooler_output).clone()
        return out

    def blank_sequence(_m, _inp, out):
        states = out[0]
        n = states.shape[1]
        filler = empty_seq[:, -1:].expand(1, n, -1).clone()  # past the empty prompt's length: its padding state
        filler[:, : min(n, empty_seq.shape[1])] = empty_seq[:, :n]
        out.last_hidden_state = filler.to(states.dtype).expand_as(states).clone()
        return out

    module, hook = (pipe.text_encoder_2, blank_sequence) if keep == "pooled" else (pipe.text_encoder, blank_pooled)
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def pathway_split(pipe, classifier, seeds: tuple[int, ...] = (0,), progress: bool = True,
                  **grid_kwargs: Any) -> dict[str, dict[str, float]]:
    """Classifier accuracy of the MiniCanvas grid with the prompt in both pathways, the pooled vector only,
    and the T5 sequence only: {"both": {"object_acc", "style_acc"}, "pooled": ..., "sequence": ...}."""
    out = {}
    for keep in PATHWAYS:
        with ablate(pipe, keep):
            grid = generate_grid(pipe, classifier, seeds=seeds, progress=progress, **grid_kwargs)
        s = score(grid, None)
        out[keep] = {"object_acc": s["object_acc"], "style_acc": s["style_acc"]}
    return out
