"""Diff-QuickFix (Basu et al., ICLR 2024): a closed-form edit of an early text-encoder layer, supervised at
that same layer, the "preliminary" design HiRM improves on by supervising the final layer instead.

The self-attention output projection W of layer `layer` (0 by default) is edited so that its input at the
concept's last token, k, maps to the output W0 produced at the target prompt's last token, v:
W = (lamb W0 + sum v k^T)(lamb I + sum k k^T)^-1 over the prompt templates.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from hirm.encoders import TextEncoder
from hirm.erase.closed_form import ridge_edit
from hirm.erase.prompts import concept_list
from hirm.erase.textenc import concept_span, resolve_module
from hirm.errors import HirmError
from hirm.patch import SEP, Patch, fingerprint
from hirm.registry import option


@dataclass
class QuickFixConfig:
    target: str = option("", "the concept's last token is made to look like this prompt's last token ('': EOS)")
    layer: int = option(0, "text-encoder layer whose output projection is edited and supervised")
    templates: tuple[str, ...] = option(("{}", "a {}", "a picture of a {}", "an image of a {}"),
                                        "prompt templates with {}")
    lamb: float = option(0.1, "ridge term keeping the weights near the original")
    seed: int = option(42, "closed form, nothing random: kept so every method takes a seed")

    def validate(self) -> None:
        if self.lamb <= 0:
            raise HirmError(f"quickfix lamb {self.lamb}: need > 0")
        if not all("{}" in t for t in self.templates):
            raise HirmError("every template needs a '{}' where the concept goes")


def _io_at(enc: TextEncoder, module: torch.nn.Module, prompts: list[str], positions: list[int]):
    """(input, output) of `module` at one token position per prompt."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = module.register_forward_hook(lambda _m, i, o: seen.append((i[0], o)))
    try:
        enc.model(input_ids=enc.tokenize(prompts, truncate=True))
    finally:
        handle.remove()
    x, y = seen[-1]
    rows = torch.arange(len(prompts))
    pos = torch.tensor(positions)
    return x[rows, pos], y[rows, pos]


@torch.no_grad()
def erase_quickfix(encoders: list[TextEncoder], concept: str | list[str], config: QuickFixConfig,
                   progress: bool = True) -> Patch:
    """One closed-form edit for `concept` or a list of concepts (every concept's templates in one least
    squares)."""
    config.validate()
    concepts = concept_list(concept)
    tensors, fingerprints, seconds = {}, {}, {}
    for enc in encoders:
        start = time.perf_counter()
        module = resolve_module(enc, config.layer, "self_attn.out_proj")
        owners = [c for c in concepts for _ in config.templates]  # each prompt's concept
        prompts = [t.format(c) for c in concepts for t in config.templates]
        targets = [t.format(config.target).strip() if config.target else "" for t in config.templates] * len(concepts)
        ids = enc.tokenize(prompts, truncate=True).tolist()
        spans = [concept_span(enc, row, [c]) for row, c in zip(ids, owners, strict=True)]
        if any(s is None for s in spans):
            raise HirmError("quickfix: a template lost the concept's tokens; check its templates (--set templates=...)")
        keys, _ = _io_at(enc, module, prompts, [s[1] for s in spans])
        target_last = [len(enc.tokenizer(t)["input_ids"]) - (2 if t else 1) for t in targets]
        _, values = _io_at(enc, module, targets, target_last)
        bias = module.bias.detach() if module.bias is not None else 0.0
        weight = ridge_edit(module.weight.detach(), [(keys, values - bias, 1.0)], config.lamb)
        name = next(n for n, p in enc.model.named_parameters() if p is module.weight)
        tensors[f"{enc.name}{SEP}{name}"] = weight.contiguous()
        fingerprints[enc.name] = fingerprint(enc.model)
        seconds[enc.name] = time.perf_counter() - start
    return Patch(tensors=tensors, concepts=concepts, method="quickfix", config=asdict(config),
                 fingerprints=fingerprints, info={}, seconds=seconds)
