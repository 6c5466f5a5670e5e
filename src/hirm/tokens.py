"""Token-level helpers shared by the erasers and the attacks (the bottom layer both import): misspellings,
the vocabulary a search draws from, token embeddings swapped in on the fly, and the straight-through projection
of soft embeddings to real tokens."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from hirm.minicanvas import world


def typo(word: str, rng: random.Random) -> str:
    """One edit of a word: swap two neighbouring letters, drop one, or double one."""
    letters = [i for i, ch in enumerate(word) if ch.isalpha()]
    if len(letters) < 3:
        return word + word[-1]
    i = rng.choice(letters[1:-1])
    edit = rng.choice(("swap", "drop", "double"))
    if edit == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if edit == "drop":
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def vocabulary(tokenizer, which: str) -> torch.Tensor:
    """Token ids the search draws from (special tokens never)."""
    special = set(tokenizer.all_special_ids)
    if which == "all":
        ids = range(len(tokenizer))
    else:
        text = " ".join(world.render_batch(2000, seed=4242).captions)
        ids = sorted(set(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return torch.tensor([i for i in ids if i not in special])


@contextmanager
def frozen(*modules: torch.nn.Module) -> Iterator[None]:
    """Run a block with no parameter gradients in `modules` (gradients still flow *through* them), then restore
    each parameter's flag."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


@contextmanager
def embeddings_at(model: torch.nn.Module, where: Callable[[torch.Tensor], torch.Tensor],
                  values: torch.Tensor) -> Iterator[None]:
    """Input token embeddings replaced by `values` ([k, d], repeated per match) where `where(ids)` ([B, T]
    bool) holds, on every forward of `model` (a text encoder) inside the block."""
    module = model.get_input_embeddings()

    def hook(_m, inputs, out):
        mask = where(inputs[0])
        if not mask.any():
            return out
        out = out.clone()
        out[mask] = values.to(out.dtype).repeat(int(mask.sum()) // len(values), 1)
        return out

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def positions(start: int, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """`where` for `embeddings_at`: token positions [start, start + k) of every prompt."""

    def where(ids: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[:, start : start + k] = True
        return mask

    return where


def with_slots(ids: torch.Tensor, k: int, filler: torch.Tensor, first: int = 1, last: int = 0) -> torch.Tensor:
    """`ids` ([B, T]) with k slots in place of tokens `first`..`last` (none by default: "<bos> [k slots] prompt
    ..."), at the same length: the ids after them shift, the last ones drop off (or the final id repeats to fill).
    The slots hold `filler` ids, whose embeddings `embeddings_at(..., positions(first, k), ...)` replaces."""
    tail = ids[:, last + 1 :]
    slots = filler[:k][None].expand(len(ids), -1)
    return torch.cat([ids[:, :first], slots, tail, tail[:, -1:].expand(-1, k)], dim=1)[:, : ids.shape[1]]


def nearest_tokens(soft: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Index into `candidates` ([V, d] token embeddings) of the one nearest each row of `soft` ([k, d])."""
    return torch.cdist(soft.detach(), candidates).argmin(-1)


def straight_through(soft: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The nearest real token embeddings in the forward pass, the gradient to `soft` (UnlearnDiffAtk's projection)."""
    return soft + (candidates[nearest_tokens(soft, candidates)] - soft).detach()
