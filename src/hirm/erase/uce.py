"""UCE, Unified Concept Editing (Gandikota et al., WACV 2024), and RECE (Gong et al., ECCV 2024).

UCE: a closed-form edit of every cross-attention key and value projection W so that the concept's text
embeddings k map to what W mapped the guide concept to (v = W0 k_guide), while preserved concepts keep
their outputs: W = (lamb W0 + sum v k^T + s_p sum W0 k_p k_p^T)(lamb I + sum k k^T + s_p sum k_p k_p^T)^-1.
Embeddings are aligned as in the authors' code: from the concept's last word token to the end.
With `reference="unnamed"` (hirm's robust preset) each prompt's embeddings from the concept's first token on map
instead to those of the same prompt with the concept's words left out (hirm's reference), over templates that
also name the concept mid-sentence, and the model's retain prompts are preserved too.

RECE: after each UCE edit, derive in closed form the embedding that the edited projections map to the
concept's old outputs (the adversarial embedding that would bring it back), add it to the erased set,
and edit again; `epochs` rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from hirm.encoders import find_text_encoders
from hirm.erase.closed_form import ridge_edit
from hirm.erase.denoiser import cross_attention_projections, encode, last_token_index, require_unet_pipeline
from hirm.erase.prompts import (
    concept_list,
    context_templates,
    default_retain_prompts,
    known_synonyms,
    replace_concept,
)
from hirm.errors import HirmError
from hirm.minicanvas import registry, world
from hirm.patch import SEP, Patch, fingerprint
from hirm.registry import option


@dataclass
class UCEConfig:
    guide: str = option("", "what the concept is mapped to ('': unconditional, the authors' default)")
    preserve: tuple[str, ...] | None = option(None, "concepts kept in place (None: the model's own other concepts "
                                                    "where it ships them, else none)")
    templates: tuple[str, ...] = option(("{}",), "prompt templates with {} (the authors' --add_prompts adds e.g. "
                                                 "'painting by {}')")
    erase_scale: float = option(1.0, "weight of the erased concepts in the least squares")
    preserve_scale: float = option(0.1, "weight of the preserved concepts")
    lamb: float = option(0.5, "ridge term keeping the weights near the original")
    with_to_k: bool = option(True, "edit the cross-attention keys too (values always)")
    epochs: int = option(0, "RECE: rounds of adversarial-embedding removal (0: plain UCE)")
    adv_lamb: float = option(0.1, "RECE: ridge term of the adversarial embedding's closed form")
    reference: str = option("guide", "what the concept's embeddings map to: guide (the guide prompt's, from each "
                                     "one's last word token on: the authors') or unnamed (the same prompt with the "
                                     "concept's words left out, every token from the concept's first on: hirm's "
                                     "reference; the concept's known other names and the model's retain prompts, "
                                     "preserved, come with it)")
    context_prompts: int = option(0, "retain prompts (seeded choice) joined with the concept ('a {}, <prompt>', "
                                     "'<prompt>, {}') as further templates")
    seed: int = option(42, "the choice of context prompts; the closed form itself draws nothing")

    def validate(self) -> None:
        if self.lamb <= 0:
            raise HirmError(f"UCE lamb {self.lamb}: need > 0 (it keeps the edit near the original weights)")
        if self.epochs < 0:
            raise HirmError(f"RECE epochs {self.epochs}: need >= 0")
        if not all("{}" in t for t in self.templates):
            raise HirmError("every template needs a '{}' where the concept goes")
        if self.reference not in ("guide", "unnamed"):
            raise HirmError(f"UCE reference {self.reference!r}: use guide (the authors') or unnamed")
        if self.context_prompts < 0:
            raise HirmError(f"context_prompts {self.context_prompts}: need a count >= 0")
        if self.reference == "unnamed" and self.guide:
            raise HirmError("reference unnamed maps each prompt to itself without the concept: drop --set guide")


def aligned_pair(pipe, prompt: str, guide: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(concept embeddings, guide embeddings) from each one's last word token on, cut to equal length."""
    emb = encode(pipe, [prompt, guide if guide else " "])
    i, j = last_token_index(pipe, prompt), last_token_index(pipe, guide if guide else " ")
    far = max(i, j)
    n = emb.shape[1]
    return emb[0, i : n - (far - i)], emb[1, j : n - (far - j)]


def unnamed_pairs(pipe, prompts: list[str], names: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per prompt: (its embeddings from the concept's first token on, those of the same prompt with the concept's
    words left out). Each token after the concept pairs with the same token of the unnamed prompt, the concept's
    own tokens with the token before them; earlier positions are equal under the causal mask and not edited."""
    left_out = [replace_concept(p, names) for p in prompts]
    emb, ref = encode(pipe, prompts), encode(pipe, left_out)
    pairs = []
    for i, (p, q) in enumerate(zip(prompts, left_out, strict=True)):
        a, b = pipe.tokenizer(p)["input_ids"], pipe.tokenizer(q)["input_ids"]
        first = next(j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
        named = len(a) - len(b)  # the concept's tokens
        partner = [max(j - named, first - 1) for j in range(first, emb.shape[1])]
        pairs.append((emb[i, first:], ref[i, partner]))
    return pairs


def erase_set(pipe, concepts: list[str], config: UCEConfig) -> tuple[list[list[tuple[torch.Tensor, torch.Tensor]]],
                                                                     tuple[str, ...]]:
    """What the least squares is fitted on: per concept, its (embeddings, what they map to) pairs, one per
    training prompt; and the preserved prompts."""
    encoders = find_text_encoders(pipe)
    unnamed = config.reference == "unnamed"
    retain = default_retain_prompts(encoders, concepts) if unnamed or config.context_prompts else ()
    templates = config.templates + context_templates(retain, config.context_prompts, config.seed)
    preserve = config.preserve if config.preserve is not None else (
        *default_preserve(pipe, concepts), *(retain if unnamed else ()))
    if unnamed:
        names = [[c, *known_synonyms(encoders, c)] for c in concepts]
        pairs = [unnamed_pairs(pipe, [t.format(n) for n in group for t in templates], group) for group in names]
    else:
        pairs = [[aligned_pair(pipe, t.format(c), config.guide) for t in templates] for c in concepts]
    return pairs, tuple(preserve)


def least_squares(originals: dict[str, torch.Tensor], keys: torch.Tensor, guide: torch.Tensor,
                  preserve_keys: torch.Tensor | None, config: UCEConfig) -> dict[str, torch.Tensor]:
    """UCE's edit of each projection W0 in `originals`: `keys` to what W0 made of `guide`, `preserve_keys` to what
    W0 made of them, near W0."""
    out = {}
    for n, w0 in originals.items():
        groups = [(keys, guide @ w0.T, config.erase_scale)]
        if preserve_keys is not None:
            groups.append((preserve_keys, preserve_keys @ w0.T, config.preserve_scale))
        out[n] = ridge_edit(w0, groups, config.lamb)
    return out


def erase_uce(pipe, concept: str | list[str], config: UCEConfig, progress: bool = True) -> Patch:
    """One closed-form edit for `concept` or a list of concepts (UCE's own multi-concept form: every concept's
    keys in one least squares, the preserve set excluding all of them)."""
    config.validate()
    method = "rece" if config.epochs else "uce"
    require_unet_pipeline(pipe, method)
    concepts = concept_list(concept)
    unet = pipe.unet
    projections = cross_attention_projections(unet, keys=config.with_to_k)
    pairs, preserve = erase_set(pipe, concepts, config)
    erase_keys = torch.cat([k for group in pairs for k, _ in group])
    guide_keys = torch.cat([g for group in pairs for _, g in group])
    preserve_keys = encode(pipe, list(preserve)).flatten(0, 1) if preserve else None
    originals = {n: m.weight.detach().clone() for n, m in projections.items()}
    start = time.perf_counter()

    with torch.no_grad():
        edited = least_squares(originals, erase_keys, guide_keys, preserve_keys, config)
        keys, guides = [erase_keys], [guide_keys]
        for _ in range(config.epochs):  # RECE: per concept, its first template's adversarial embedding
            for group in pairs:
                concept_keys, concept_guide = group[0]
                keys.append(adversarial_embedding(originals, edited, concept_keys, config.adv_lamb))
                guides.append(concept_guide)
            edited = least_squares(originals, torch.cat(keys), torch.cat(guides), preserve_keys, config)
    info = {"unet": {"layers": len(projections), "preserved": len(preserve), "adversarial_rounds": config.epochs}}
    return Patch(tensors={f"unet{SEP}{n}": t.contiguous() for n, t in edited.items()}, concepts=concepts,
                 method=method, config={**asdict(config), "preserve": list(preserve)},
                 fingerprints={"unet": fingerprint(unet)}, info=info,
                 seconds={"unet": time.perf_counter() - start})


def preimage_matrix(originals: dict[str, torch.Tensor], edited: dict[str, torch.Tensor], lamb: float,
                    anchored: bool) -> torch.Tensor:
    """M [d, d] with x = M v = argmin_x sum_l |W_l x - W0_l v|^2 + lamb |x - a|^2 over every projection l: the
    input that the edited projections W turn into what the original ones W0 made of v. a = v when `anchored`
    (the nearest such input to v: where the robust preset's text half aims through the denoiser half), else a = 0
    (RECE's adversarial embedding). Float64."""
    d = next(iter(originals.values())).shape[1]
    a = lamb * torch.eye(d, dtype=torch.float64)
    b = lamb * torch.eye(d, dtype=torch.float64) if anchored else torch.zeros(d, d, dtype=torch.float64)
    for n, w in edited.items():
        wd = w.double()
        a = a + wd.T @ wd
        b = b + wd.T @ originals[n].double()
    return torch.linalg.solve(a, b)


def adversarial_embedding(originals: dict[str, torch.Tensor], edited: dict[str, torch.Tensor],
                          concept: torch.Tensor, lamb: float) -> torch.Tensor:
    """RECE's closed form: c' = argmin sum_l |W_l c' - W0_l c|^2 + lamb |c'|^2 (every projection l)."""
    return (concept.double() @ preimage_matrix(originals, edited, lamb, anchored=False).T).to(concept.dtype)


def through_denoiser(pipe, patch: Patch, lamb: float = 1e-2) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map v -> the text-encoder output that `pipe`'s UNet, with `patch`'s cross-attention edit, turns into
    what the original UNet made of v (`preimage_matrix`, anchored at v): applied to a text-encoder edit's
    targets, it makes text prompts end, through the edited UNet, where that edit alone would send them."""
    projections = cross_attention_projections(pipe.unet)
    originals = {n: m.weight.detach() for n, m in projections.items()}
    edited = {n: patch.tensors[f"unet{SEP}{n}"] for n in projections if f"unet{SEP}{n}" in patch.tensors}
    if not edited:
        raise HirmError(f"{patch.method} edits no cross-attention projection of this UNet: nothing to aim through")
    m = preimage_matrix({n: originals[n] for n in edited}, edited, lamb, anchored=True)

    def aim(v: torch.Tensor) -> torch.Tensor:
        return (v.double() @ m.T.to(v.device)).to(v.dtype)

    return aim


def default_preserve(pipe, concepts: list[str]) -> tuple[str, ...]:
    """The MiniCanvas world's concept names other than `concepts` for its model; nothing otherwise (the
    authors' default for objects; pass --preserve for artists)."""
    encoders = find_text_encoders(pipe)
    if encoders and registry.is_minicanvas(encoders[0].model):
        return tuple(c for c in (*world.OBJECTS, *world.STYLES) if c not in concepts)
    return ()
