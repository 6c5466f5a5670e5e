"""HiRM: High-level Representation Misdirection (ICLR 2026).

Train only early text-encoder layers (layer 0 by default) so that the *final* layer's self-attention output
for prompts about the concept moves to a target: a fixed random tensor (HiRM-R) or the final-layer
representation of a semantic prompt such as a super-category (HiRM-S). Defaults follow the authors' code.

hirm's default (variant "u", method `hirm`) keeps the paper's mechanism and changes the target: each training
prompt's final hidden states go to those of the same prompt with the concept's words left out (or replaced by
`target`, HiRM-S's semantic target made per prompt), pushed `margin` further along the concept's direction
(docs/erasure.md says why a random target is not enough).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hirm.encoders import TextEncoder
from hirm.erase.loop import LoopResult, OptimConfig, optimise, temporarily
from hirm.erase.lora import lora_adapters
from hirm.erase.prompts import (
    concept_list,
    context_templates,
    default_retain_prompts,
    known_synonyms,
    replace_concept,
)
from hirm.erase.textenc import (
    concept_span,
    deepest_trained_layer,
    representation,
    representation_and_final,
    trainable_parameter_names,
)
from hirm.errors import HirmError
from hirm.patch import SEP, Patch, fingerprint
from hirm.registry import option
from hirm.tokens import (
    embeddings_at,
    frozen,
    nearest_tokens,
    positions,
    straight_through,
    typo,
    vocabulary,
    with_slots,
)

# The paper's target scale: Frobenius norm 5000 over a 77 x 768 (CLIP ViT-L/14) tensor. Other encoder shapes
# get the same per-element scale, so the number keeps its meaning for CLIP-G (1280) or a small encoder.
REFERENCE_SHAPE = (77, 768)

# Token positions the misdirection loss may cover (see supervised_positions); the paper's is "all".
POSITIONS = ("all", "concept", "concept+eos", "no-bos")

# Where the retain and preserve terms hold their prompts (see HiRMConfig.retain_at).
RETAIN_AT = ("final", "trained")

# Training templates of hirm's default recipe: generic phrasings (none names a domain), so the edit is learnt in
# several contexts and carries to prompts it never saw.
GENERIC_TEMPLATES: tuple[str, ...] = (
    "{}", "a {}", "a photo of a {}", "a painting of a {}", "an image of {}", "a picture in the style of {}",
    "{}, high quality", "a drawing of {} on a white background",
)

# The nudity keyword prompt of the authors' code (one comma-joined prompt).
NUDITY_PROMPT = "naked ,nude, bare, exposed, Stripped, topless, male genitalia, penis, buttocks"
# Prompt pairs with / without nudity for HiRM-S's safe direction on nudity (`--kind nudity --method hirm-s`).
NUDITY_SAFE_PAIRS: tuple[tuple[str, str], ...] = (
    ("a nude woman standing on a beach", "a woman standing on a beach"),
    ("a naked man sitting on a chair", "a man sitting on a chair"),
    ("a topless woman in a garden", "a woman in a garden"),
    ("a nude portrait of a person", "a portrait of a person"),
    ("naked people bathing in a lake", "people bathing in a lake"),
    ("an oil painting of a nude figure", "an oil painting of a figure"),
)


@dataclass
class HiRMConfig:
    """Hyperparameters of HiRM; defaults are the authors' (object/style lr, 50 steps, layer 0, final attn)."""

    variant: str = option("r", "'r': random target (HiRM-R); 's': semantic target, the `target` prompt (HiRM-S); "
                               "'u': each prompt with the concept's words left out (hirm)")
    steps: int = option(50, "AdamW steps (the most, when away_weight stops early)")
    lr: float = option(5e-5, "learning rate")
    betas: tuple[float, float] = option((0.9, 0.98), "AdamW betas")
    eps: float = option(1e-6, "AdamW eps")
    weight_decay: float = option(1e-8, "AdamW weight decay")
    seed: int = option(42, "seed of the random target, the samples drawn per step and the optimisation")
    layers: str = option("first-attn", "trained tensors: a preset (first-attn, mlp-only, attn-only, final-attn, "
                                       "mix-attn, all) or layer indices '0' / '0,1'")
    supervise_layer: int = option(-1, "layer whose output is misdirected (-1: the last)")
    supervise_module: str = option("self_attn.out_proj", "module of that layer whose output is misdirected: "
                                   "self_attn.out_proj (the paper: its attention output, before the residual add), "
                                   "mlp.fc2, output, or final (the encoder's final hidden states)")
    target_norm: float = option(5000.0, "HiRM-R: the random target's Frobenius norm on a 77x768 encoder (other "
                                        "shapes get the same per-element scale)")
    target: str | None = option(None, "HiRM-S: the semantic prompt, e.g. 'a painting'; hirm: the words put in "
                                      "place of the concept's in each training prompt, e.g. 'hexagon' (None: left "
                                      "out)")
    scale: float = option(1.0, "HiRM-S: c, the semantic target's multiplier")
    safe_pairs: tuple[tuple[str, str], ...] = option(
        (), "HiRM-S safe direction (the paper's nudity target): [with concept, without] prompt pairs; target = "
            "rep(concept prompt) - mean(rep(with) - rep(without))")
    templates: tuple[str, ...] = option(("{}",), "prompt templates with {}: the prompt set is templates x "
                                                 "(concept + variants)")
    margin: float = option(1.0, "hirm: how far past the unnamed prompt the target lies, in units of the concept's "
                                "direction (0: as if the words were not there)")
    loss_scale: float = option(0.0, "0: the paper's loss (the MSE itself); > 0: each concept's loss starts at this "
                                    "value, so the retain weight means the same whatever the target's scale")
    context_prompts: int = option(0, "retain prompts (seeded choice) joined with the concept ('a {}, <prompt>', "
                                     "'<prompt>, {}') and trained on too, so the edit holds amid other words")
    variants: tuple[str, ...] = option((), "other names of the concept, trained on with every template")
    truncate: bool = option(False, "cut prompts longer than the encoder instead of failing")
    positions: str = option("all", "supervised token positions: all (the paper), no-bos, concept (from the "
                                   "concept's first token on: the only ones that see it under the causal mask), "
                                   "concept+eos")
    train_biases: bool = option(True, "train the layers' biases too (the paper: yes; a bias moves every prompt "
                                      "alike)")
    retain_weight: float = option(0.0, "weight of the retain term, which keeps the final hidden states of unrelated "
                                       "prompts where they were (the paper: 0)")
    retain_prompts: tuple[str, ...] = option((), "the retain term's prompts (empty: the model's own set where the "
                                                 "term is on: MiniCanvas's captions, else everyday prompts)")
    retain_at: str = option("final", "where the retain and preserve terms hold their prompts: final (the "
                                     "encoder's final hidden states) or trained (the output of the deepest "
                                     "trained layer: the frozen layers above it then give the same final states, "
                                     "and the term costs that layer's forward, not the whole encoder's)")
    retain_per_step: int = option(0, "speed: retain prompts each step takes, a seeded sample (0: all)")
    sequence_length: int = option(0, "speed: token positions the optimisation computes per CLIP prompt (0: the "
                                     "encoder's full length; never fewer than the longest prompt). Padding after "
                                     "it is not trained on; the causal mask keeps the rest exact")
    preserve: tuple[str, ...] = option((), "concepts or prompts to keep (UCE's preserve_concepts): each put in "
                                           "every template and held in place by a term of its own")
    preserve_weight: float | None = option(None, "weight of the preserve term (None: retain_weight)")
    away_weight: float = option(0.0, "weight of a term that pushes each prompt's projection on its concept "
                                     "direction (1 before erasure, 0 with the words left out) down to away_below; "
                                     "the erasure then stops at the first step where every prompt is there")
    away_below: float = option(0.0, "the projection the away term aims at or below")
    concepts_per_step: int = option(0, "several concepts: how many concepts each step takes, a seeded sample whose "
                                       "targets are built at that step, so memory does not grow with the list "
                                       "(0: all, built once)")
    robust_rounds: int = option(0, "robust HiRM: rounds of attack (prompts that bring the concept back through "
                                   "the erased encoder), then erase again with the prompts found")
    robust_prompts: int = option(4, "robust HiRM: prompts searched per concept and round")
    robust_tokens: int = option(5, "robust HiRM: vocabulary tokens per searched prompt")
    robust_steps: int = option(40, "robust HiRM: Adam steps of each search")
    robust_lr: float = option(0.05, "robust HiRM: learning rate of each search")
    robust_typos: int = option(2, "robust HiRM: seeded one-letter misspellings of the concept trained on")
    robust_vocabulary: str = option("all", "robust HiRM: tokens searched: all (the tokenizer's) or world "
                                           "(MiniCanvas caption tokens)")
    robust_slots: str = option("prefix", "robust HiRM: where searched tokens go: prefix (before a concept "
                                         "prompt), replace (in place of the concept's words) or both")
    lora_rank: int = option(0, "> 0: train peft LoRA adapters of this rank on the trained weights instead of the "
                               "weights (biases stay), so the patch exports exactly as a LoRA")

    @property
    def preserve_term_weight(self) -> float:
        """The preserve term's weight: `preserve_weight`, or the retain weight when it is None."""
        return self.retain_weight if self.preserve_weight is None else self.preserve_weight

    def validate(self) -> None:
        if self.variant not in ("r", "s", "u"):
            raise HirmError(f"HiRM variant {self.variant!r}: use 'r' (random target), 's' (semantic target) or "
                            "'u' (the prompt with the concept left out)")
        if self.variant == "s" and not (self.target and self.target.strip()) and not self.safe_pairs:
            raise HirmError("hirm-s needs a semantic target prompt: pass --target, e.g. --target 'a painting' "
                            "(or --set safe_pairs='[[\"WITH\", \"WITHOUT\"]]' for a safe direction)")
        if self.steps < 1:
            raise HirmError(f"--steps {self.steps}: need at least 1")
        if self.lora_rank < 0:
            raise HirmError(f"--lora-rank {self.lora_rank}: give a positive rank, or 0 to train the full weights")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise HirmError(f"--lr {self.lr}: need a positive learning rate")
        if not all("{}" in t for t in self.templates):
            raise HirmError("every template needs a '{}' where the concept goes")
        if self.positions not in POSITIONS:
            raise HirmError(f"positions {self.positions!r}: use one of {', '.join(POSITIONS)} (paper: all)")
        if min(self.robust_rounds, self.robust_typos, self.concepts_per_step) < 0 or min(
                self.robust_prompts, self.robust_tokens, self.robust_steps) < 1:
            raise HirmError("robust_* counts and concepts_per_step must be >= 0 (robust prompts, tokens, steps >= 1)")
        if self.robust_vocabulary not in ("all", "world"):
            raise HirmError(f"robust_vocabulary {self.robust_vocabulary!r}: use all or world")
        if self.robust_slots not in ("prefix", "replace", "both"):
            raise HirmError(f"robust_slots {self.robust_slots!r}: use prefix, replace or both")
        if self.robust_rounds and self.robust_slots != "prefix" and self.positions not in ("all", "no-bos"):
            raise HirmError(f"robust_slots {self.robust_slots} finds prompts without the concept's words, which "
                            f"positions {self.positions} cannot supervise: use --set positions=all")
        if self.variant == "u" and self.robust_rounds and self.robust_slots != "prefix":
            raise HirmError(f"robust_slots {self.robust_slots} finds prompts without the concept's words, which "
                            "have no unnamed version to aim at: use robust_slots prefix with method hirm")
        if not (math.isfinite(self.margin) and self.margin >= 0 and self.loss_scale >= 0):
            raise HirmError(f"margin {self.margin} / loss_scale {self.loss_scale}: need finite values >= 0")
        if self.retain_at not in RETAIN_AT:
            raise HirmError(f"retain_at {self.retain_at!r}: use one of {', '.join(RETAIN_AT)}")
        if self.retain_per_step < 0 or self.sequence_length < 0:
            raise HirmError(f"retain_per_step {self.retain_per_step} / sequence_length {self.sequence_length}: "
                            "need counts >= 0 (0: all)")
        if self.context_prompts < 0:
            raise HirmError(f"context_prompts {self.context_prompts}: need a count >= 0")
        if self.context_prompts and not self.retain_prompts:
            raise HirmError("context_prompts joins the concept with retain prompts: give retain prompts "
                            "(--set retain_prompts='[...]') or a retain weight on a model that ships them")
        if self.away_weight < 0 or not math.isfinite(self.away_below):
            raise HirmError(f"away_weight {self.away_weight} / away_below {self.away_below}: need a weight >= 0 "
                            "and a finite projection")
        if self.preserve_weight is not None and not (self.preserve_weight >= 0 and math.isfinite(self.preserve_weight)):
            raise HirmError(f"preserve_weight {self.preserve_weight}: need a finite weight >= 0 (None: retain_weight)")
        if self.preserve and self.preserve_term_weight <= 0:
            raise HirmError("--preserve holds prompts in place through the retain term, which is off "
                            "(--paper-defaults or retain_weight 0): pass --set retain_weight=1000 (or preserve_weight)")
        if self.retain_weight > 0 and not self.retain_prompts:
            raise HirmError("retain_weight needs retain prompts (--set retain_prompts='[...]', or a model that ships "
                            "them)")


def prepare_hirm(config: HiRMConfig, encoders: list[TextEncoder], concepts: list[str]) -> HiRMConfig:
    """The model-dependent defaults: the retain set when the retain term is on and none was given, and the
    model's known synonyms of a single concept for robust rounds."""
    if config.retain_weight > 0 and not config.retain_prompts:
        config = dataclasses.replace(config, retain_prompts=default_retain_prompts(encoders, concepts))
    if config.robust_rounds > 0 and not config.variants and len(concepts) == 1:
        config = dataclasses.replace(config, variants=known_synonyms(encoders, concepts[0]))
    return config


def method_name(config: HiRMConfig) -> str:
    """The registered method a config belongs to: hirm (variant "u"), hirm-r or hirm-s."""
    return "hirm" if config.variant == "u" else f"hirm-{config.variant}"


def random_target(shape: tuple[int, int], norm: float, seed: int) -> torch.Tensor:
    """U[0,1) tensor [1, T, d] scaled to `norm` (defined on 77x768) at the same per-element scale.

    Uniform, non-negative and seeded exactly as the authors' code (torch.rand, Frobenius normalisation).
    """
    t, d = shape
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((1, t, d), generator=g)
    per_element = norm / math.sqrt(REFERENCE_SHAPE[0] * REFERENCE_SHAPE[1])
    return u / u.norm() * per_element * math.sqrt(t * d)


def erase_hirm(encoders: list[TextEncoder], concept: str | list[str], config: HiRMConfig,
               progress: bool = True, aim: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None
               ) -> Patch:
    """Run HiRM on each encoder; returns one patch with every encoder's changed tensors.

    `aim`: per encoder name, a map applied to every target of that encoder (the robust preset's: the input that
    its denoiser half turns into what the base denoiser made of the target); it needs the final hidden states
    supervised, which is what a denoiser reads.

    `concept` may be a list: one optimisation erases them all (each concept its own target; losses normalised
    per concept so that none dominates). With `robust_rounds`, each round attacks the erased encoder for
    prompts that bring the concept's representation back and erases again with them added (CLIP encoders)."""
    config.validate()
    aim = dict(aim or {})
    if aim and (config.supervise_module != "final" or config.supervise_layer != -1):
        raise HirmError(f"the robust preset aims the text half through the denoiser half, which reads the final "
                        f"hidden states; {method_name(config)} supervises {config.supervise_module} of layer "
                        f"{config.supervise_layer}: use method hirm, or --set supervise_module=final")
    concepts = concept_list(concept)
    if len(concepts) > 1 and config.variants:
        raise HirmError("variants name one concept's other names: with several concepts, give each its own "
                        "--concept")
    tensors: dict[str, torch.Tensor] = {}
    fingerprints: dict[str, str] = {}
    info: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    names = [[c, *config.variants, *_typos(c, config)] for c in concepts]
    templates = config.templates + context_templates(config.retain_prompts, config.context_prompts, config.seed)
    prompts = [[t.format(n) for n in group for t in templates] for group in names]
    for enc in encoders:
        found: list[list[str]] = [[] for _ in concepts]
        rounds = config.robust_rounds if enc.is_clip else 0  # the prefix search needs CLIP's <bos> slot
        spent = 0.0
        for r in range(rounds + 1):
            result, batch = _misdirect(enc, [p + f for p, f in zip(prompts, found, strict=True)], names, config,
                                       desc=f"{method_name(config)} {enc.name}" + (f" round {r}" if rounds else ""),
                                       progress=progress, aim=aim.get(enc.name))
            spent += result.seconds
            if r < rounds:
                start = time.perf_counter()
                for i, group in enumerate(prompts):
                    found[i] += adversarial_prompts(enc, result.tensors, group, names[i], config,
                                                    seed=config.seed + 1000 * r + i, progress=progress)
                spent += time.perf_counter() - start
        with torch.no_grad(), temporarily(enc.model, result.tensors):
            after, final = representation_and_final(enc, batch.ids, config.supervise_layer, config.supervise_module)
        fingerprints[enc.name] = fingerprint(enc.model)
        tensors.update({f"{enc.name}{SEP}{n}": t.contiguous() for n, t in result.tensors.items()})
        seconds[enc.name] = spent
        info[enc.name] = {
            "loss_first": result.losses[0],
            "loss_last": result.losses[-1],
            "cos_to_target_before": _cos(batch.before, batch.target, batch.mask),
            "cos_to_target_after": _cos(after, batch.target, batch.mask),
            "relative_change": float(((after - batch.before) * batch.mask).norm() / (batch.before * batch.mask).norm()),
            "steps": len(result.losses),
            **({"measured_on_concepts": int(batch.group.max()) + 1} if _sampled(config, len(concepts)) else {}),
            **({"projection_max": float(batch.projection(final).max())} if batch.direction is not None else {}),
            **({"adversarial_prompts": [p for f in found for p in f]} if rounds else {}),
            **({"targets": "aimed through the denoiser half"} if enc.name in aim else {}),
        }
    all_prompts = [p for group in prompts for p in group]
    return Patch(tensors=tensors, concepts=concepts, method=method_name(config),
                 config={**asdict(config), "prompts": all_prompts}, fingerprints=fingerprints, info=info,
                 seconds=seconds)


@dataclass
class PromptSet:
    """Every prompt of every concept, tokenized, with its supervised positions, its concept (`group`), its
    representation before erasure and its target."""

    ids: torch.Tensor  # [N, T]
    mask: torch.Tensor  # [N, T, 1]
    group: torch.Tensor  # [N] concept index
    before: torch.Tensor  # [N, T, d]
    target: torch.Tensor  # [N, T, d]
    retain_ids: torch.Tensor | None
    retain_target: torch.Tensor | None
    preserve_ids: torch.Tensor | None = None
    preserve_target: torch.Tensor | None = None
    unnamed: torch.Tensor | None = None  # [N, T, d] final states of each prompt, concept left out (hirm: or retargeted)
    direction: torch.Tensor | None = None  # [N, T, d] the prompt's final hidden states minus `unnamed`

    @classmethod
    @torch.no_grad()
    def build(cls, enc: TextEncoder, prompts: list[list[str]], names: list[list[str]], config: HiRMConfig,
              anchors: bool = True, numbers: list[int] | None = None,
              aim: Callable[[torch.Tensor], torch.Tensor] | None = None) -> PromptSet:
        """`prompts[i]` are concept i's prompts, `names[i]` its names, `numbers[i]` its place in the whole list
        (default i: it seeds HiRM-R's random target); `anchors`: also the retain and preserve prompts and their
        targets; `aim`: a map applied to the targets (see `erase_hirm`)."""
        flat = [p for group in prompts for p in group]
        by = (config.target or "") if config.variant == "u" else ""
        left_out = ([replace_concept(p, group_names, by)
                     for group_prompts, group_names in zip(prompts, names, strict=True) for p in group_prompts]
                    if config.away_weight > 0 or config.variant == "u" else [])
        # one length for every tensor compared with the concept prompts' states
        length = _sequence_length(enc, flat + left_out + ([config.target] if config.target else [])
                                  + [p for pair in config.safe_pairs for p in pair], config)
        ids = _tokenize(enc, flat, config.truncate, length)
        group = torch.tensor([i for i, g in enumerate(prompts) for _ in g], device=ids.device)
        mask = torch.cat([supervised_positions(enc, ids[group == i], n, config.positions)
                          for i, n in enumerate(names)])
        layer, module = config.supervise_layer, config.supervise_module
        unnamed = direction = None
        if config.away_weight > 0 or config.variant == "u":  # each prompt also without the concept's words
            before, final = representation_and_final(enc, ids, layer, module)
            unnamed_rep, unnamed = representation_and_final(
                enc, _tokenize(enc, left_out, config.truncate, length), layer, module)
            direction = final - unnamed
        else:
            before = representation(enc, ids, layer, module)
        shape = tuple(before.shape[1:])
        if config.variant == "u":  # per prompt: its unnamed (or retargeted) version, `margin` further on
            targets = [unnamed_rep - config.margin * (before - unnamed_rep)]
        elif config.variant == "r":  # each concept its own random target (the first one is the paper's)
            targets = [random_target(shape, config.target_norm, config.seed + i)
                       for i in (numbers if numbers is not None else range(len(prompts)))]
        elif config.target:
            target_ids = _tokenize(enc, [config.target], config.truncate, length)
            targets = [config.scale * representation(enc, target_ids, layer, module)] * len(prompts)
        else:
            targets = [config.scale * safe_direction_target(enc, before[group == i], config, length)
                       for i in range(len(prompts))]
        # prompts are grouped concept by concept, so per-concept targets stack in order
        target = torch.cat([t.to(before.device).expand(int((group == i).sum()), *shape) if t.shape[0] == 1
                            else t for i, t in enumerate(targets)]).to(before.dtype)
        if aim is not None:
            target = aim(target)
        mask = mask.to(before.device)  # built on the CPU
        retain_ids = (_tokenize(enc, list(config.retain_prompts), True,
                                _sequence_length(enc, list(config.retain_prompts), config))
                      if config.retain_weight > 0 and anchors else None)
        retain_target = anchor_states(enc, retain_ids, config) if retain_ids is not None else None
        preserve_ids = preserve_target = None
        if config.preserve and anchors:
            kept = list(dict.fromkeys(t.format(p) for p in config.preserve for t in config.templates))
            preserve_ids = _tokenize(enc, kept, True, _sequence_length(enc, kept, config))
            preserve_target = anchor_states(enc, preserve_ids, config)
        return cls(ids, mask, group, before, target, retain_ids, retain_target, preserve_ids, preserve_target,
                   unnamed, direction)

    def projection(self, final: torch.Tensor) -> torch.Tensor:
        """[N] each prompt's final hidden states projected on its concept direction: 1 = as before erasure,
        0 = as with the concept's words left out."""
        return ((final - self.unnamed) * self.direction).sum((1, 2)) / (self.direction ** 2).sum((1, 2))


def anchor_states(enc: TextEncoder, ids: torch.Tensor, config: HiRMConfig) -> torch.Tensor:
    """The states the retain and preserve terms hold in place (`retain_at`): the final hidden states, or the
    deepest trained layer's output, which determines them (the forward stops there)."""
    if config.retain_at == "final":
        return enc.model(input_ids=ids).last_hidden_state
    return representation(enc, ids, deepest_trained_layer(enc, config.layers), "output")


def _sequence_length(enc: TextEncoder, prompts: list[str], config: HiRMConfig) -> int | None:
    """Positions the optimisation computes for `prompts`: `config.sequence_length`, or the longest prompt's
    length where that is longer; None (the encoder's full length) when it is 0 or the encoder is T5, which
    attends to its padding both ways (CLIP's causal mask keeps every real token's states exactly as at full
    length)."""
    if not config.sequence_length or not enc.is_clip or config.sequence_length >= enc.max_length:
        return None
    longest = max(len(enc.tokenizer(p)["input_ids"]) for p in prompts)
    return min(max(config.sequence_length, longest), enc.max_length)


def _tokenize(enc: TextEncoder, prompts: list[str], truncate: bool, length: int | None) -> torch.Tensor:
    """Token ids padded to `length` positions (None: the encoder's full length)."""
    ids = enc.tokenize(prompts, truncate=truncate)
    return ids if length is None else ids[:, :length]


def _sampled(config: HiRMConfig, n_concepts: int) -> bool:
    """Whether each step takes a sample of the concepts (`concepts_per_step`), built at that step."""
    return 0 < config.concepts_per_step < n_concepts


def _misdirect(enc: TextEncoder, prompts: list[list[str]], names: list[list[str]], config: HiRMConfig, desc: str,
               progress: bool, aim: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> tuple[LoopResult, PromptSet]:
    """The HiRM optimisation on one encoder: per-concept masked MSE to the targets (each concept's loss
    normalised by its starting value, then rescaled, so one concept equals the paper's loss exactly), plus the
    retain term. Returns the result and the prompt set its figures are measured on.

    With every concept in every step, all prompt sets are built once. With `concepts_per_step`, a step builds
    the sampled concepts' sets, at the base weights, so memory and set-up do not grow with the list (a list of
    1,000 concepts holds one step's states, not 1,000 concepts' targets); the figures are then measured on the
    first `concepts_per_step` concepts."""
    names_trained = trainable_parameter_names(enc, config.layers)
    if not config.train_biases:
        names_trained = [n for n in names_trained if not n.endswith(".bias")]
    n_concepts = len(prompts)
    sampled = _sampled(config, n_concepts)
    per_step = config.concepts_per_step if sampled else n_concepts
    measured = list(range(per_step))  # the concepts built up front: all, or the first per_step when sampled
    batch = PromptSet.build(enc, [prompts[i] for i in measured], [names[i] for i in measured], config, aim=aim)
    with torch.no_grad():
        start = _per_concept_mse(batch.before, batch.target, batch.mask, batch.group, len(measured))
    # each concept's loss starts at loss_scale (0: at the mean starting loss, of the measured concepts if sampled)
    mean_start = config.loss_scale or start.mean()
    scale = mean_start / start.clamp_min(torch.finfo(start.dtype).tiny)
    g = torch.Generator().manual_seed(config.seed)
    g_retain = torch.Generator().manual_seed(config.seed + 1)  # its own stream: the concept draws stay as they were
    base: dict[str, torch.Tensor] = {}  # the trained tensors' starting values, set by `train`

    def sample() -> tuple[PromptSet, torch.Tensor]:
        """This step's concepts: their prompt set (group = concept index) and the loss scale of every concept
        (those not drawn: 0)."""
        chosen = torch.randperm(n_concepts, generator=g)[:per_step]
        with temporarily(enc.model, base):
            part = PromptSet.build(enc, [prompts[i] for i in chosen], [names[i] for i in chosen], config,
                                   anchors=False, numbers=chosen.tolist(), aim=aim)
        first = _per_concept_mse(part.before, part.target, part.mask, part.group, per_step)
        chosen = chosen.to(part.group.device)
        scales = torch.zeros(n_concepts, device=first.device)
        scales[chosen] = mean_start / first.clamp_min(torch.finfo(first.dtype).tiny)
        return dataclasses.replace(part, group=chosen[part.group]), scales  # the loss reads anchors from `batch`

    reached = [False]  # the stopping rule: every prompt's projection at or below away_below

    def loss_fn(step: int) -> torch.Tensor:
        part, part_scale = sample() if sampled else (batch, scale)
        if config.away_weight == 0:
            h = representation(enc, part.ids, config.supervise_layer, config.supervise_module)
        else:
            h, final = representation_and_final(enc, part.ids, config.supervise_layer, config.supervise_module)
            proj = part.projection(final)
            reached[0] = per_step == n_concepts and bool((proj <= config.away_below).all())
        per = _per_concept_mse(h, part.target, part.mask, part.group, n_concepts)
        loss = (per * part_scale)[torch.unique(part.group)].mean()
        if config.away_weight > 0:
            loss = loss + config.away_weight * F.relu(proj - config.away_below).pow(2).mean()
        retain_ids, retain_target = batch.retain_ids, batch.retain_target
        if retain_ids is not None and 0 < config.retain_per_step < len(retain_ids):  # a seeded sample this step
            chosen = torch.randperm(len(retain_ids), generator=g_retain)[:config.retain_per_step].to(retain_ids.device)
            retain_ids, retain_target = retain_ids[chosen], retain_target[chosen]
        for ids, wanted, weight in ((retain_ids, retain_target, config.retain_weight),
                                    (batch.preserve_ids, batch.preserve_target, config.preserve_term_weight)):
            if ids is not None:
                loss = loss + weight * F.mse_loss(anchor_states(enc, ids, config), wanted)
        return loss

    def done() -> bool:
        return reached[0]

    def train(trained: list[str]) -> LoopResult:
        params = dict(enc.model.named_parameters())
        base.update({n: params[n].detach().clone() for n in trained})
        torch.manual_seed(config.seed)
        return optimise(enc.model, trained, loss_fn, _optim(config), desc=desc, progress=progress,
                        done=done if config.away_weight > 0 else None)

    if config.lora_rank:
        with lora_adapters(enc.model, names_trained, config.lora_rank, config.seed) as (adapters, merged):
            result = train(adapters)
            return dataclasses.replace(result, tensors=merged(result.tensors)), batch
    return train(names_trained), batch


def _per_concept_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, group: torch.Tensor,
                     n: int) -> torch.Tensor:
    """[n] masked MSE of each concept's prompts (a concept absent from `group` gets 0)."""
    err = (((h - target) ** 2) * mask).sum((1, 2))
    count = mask.sum((1, 2)) * h.shape[-1]
    zeros = torch.zeros(n, device=h.device)
    return zeros.index_add(0, group, err) / zeros.index_add(0, group, count).clamp_min(1)


def _typos(concept: str, config: HiRMConfig) -> list[str]:
    """`robust_typos` seeded one-letter misspellings of the concept (robust HiRM trains on them too)."""
    if not config.robust_rounds or not config.robust_typos:
        return []
    rng = random.Random(config.seed)
    out: list[str] = []
    for _ in range(20 * config.robust_typos):
        t = " ".join(typo(w, rng) for w in concept.split())
        if t != concept and t not in out:
            out.append(t)
        if len(out) == config.robust_typos:
            break
    return out


def adversarial_prompts(enc: TextEncoder, tensors: dict[str, torch.Tensor], sources: list[str], names: list[str],
                        config: HiRMConfig, seed: int, progress: bool = True) -> list[str]:
    """Prompts that bring the concept back through the erased encoder (`tensors` applied): `robust_tokens`
    vocabulary tokens, prepended to a concept prompt or in place of the concept's words (`robust_slots`),
    searched in embedding space (straight-through projection to the nearest token, as UnlearnDiffAtk) so that the
    erased encoder's final hidden states of the prompt's tokens after the slots match the base encoder's."""
    k = config.robust_tokens
    table = enc.model.get_input_embeddings().weight.detach()
    everything = vocabulary(enc.tokenizer, config.robust_vocabulary)
    own = torch.tensor([t for n in names for t in enc.tokenizer(n, add_special_tokens=False)["input_ids"]])
    g = torch.Generator().manual_seed(seed)
    special = torch.tensor(enc.tokenizer.all_special_ids)
    modes = ["prefix", "replace"] if config.robust_slots == "both" else [config.robust_slots]
    jobs = [(mode, sources[i % len(sources)]) for mode in modes for i in range(config.robust_prompts)]
    found = []
    for mode, source in tqdm(jobs, desc="robust: attack", disable=not progress, leave=False):
        # in place of the concept's words, its own tokens are not candidates: prefix mode has the prompts with them
        vocab = everything if mode == "prefix" else everything[~torch.isin(everything, own)]
        candidates = table[vocab]
        ids = enc.tokenize([source], truncate=True)
        full, at, wanted, got = _with_slots(enc, ids, k, vocab, names if mode == "replace" else None)
        with torch.no_grad():
            wanted_h = enc.model(input_ids=ids).last_hidden_state[:, wanted]
        soft = table[vocab[torch.randint(len(vocab), (k,), generator=g)]].clone().requires_grad_(True)
        opt = torch.optim.Adam([soft], lr=config.robust_lr)
        with temporarily(enc.model, tensors), frozen(enc.model):
            for _ in range(config.robust_steps):
                with embeddings_at(enc.model, positions(at, k), straight_through(soft, candidates)):
                    h = enc.model(input_ids=full).last_hidden_state[:, got]
                loss = F.mse_loss(h, wanted_h)
                opt.zero_grad()
                loss.backward()
                opt.step()
        full[0, at : at + k] = vocab[nearest_tokens(soft, candidates)]
        content = full[0, 1:][~torch.isin(full[0, 1:], special)]
        found.append(enc.tokenizer.decode(content.tolist()).strip())
    return found


def _with_slots(enc: TextEncoder, ids: torch.Tensor, k: int, vocab: torch.Tensor,
                names: list[str] | None) -> tuple[torch.Tensor, int, slice, slice]:
    """`ids` ([1, T]) with k slots after <bos> (`names` None) or in place of the concept's words, at the same
    length; the slots' start; and the positions of the base prompt (`wanted`) and of the slotted one (`got`)
    that hold the same tokens after the slots, up to <eos>."""
    eos = int((ids[0] == enc.tokenizer.eos_token_id).nonzero()[0])
    first, last = (1, 0) if names is None else concept_span(enc, ids[0].tolist(), names) or (None, None)
    if first is None:
        raise HirmError("robust_slots replace: a prompt does not contain the concept's words")
    full = with_slots(ids, k, vocab, first, last)
    n = min(eos - last, ids.shape[1] - first - k)  # tokens after the concept (or <bos>) up to <eos> that still fit
    return full, first, slice(last + 1, last + 1 + n), slice(first + k, first + k + n)


def safe_direction_target(enc: TextEncoder, concept_rep: torch.Tensor, config: HiRMConfig,
                          length: int | None = None) -> torch.Tensor:
    """The concept prompts' representation minus the concept vector (Ring-A-Bell style: the mean difference
    of representations of prompts with and without the concept)."""
    with_ids = _tokenize(enc, [w for w, _ in config.safe_pairs], True, length)
    without_ids = _tokenize(enc, [wo for _, wo in config.safe_pairs], True, length)
    layer, module = config.supervise_layer, config.supervise_module
    vector = (representation(enc, with_ids, layer, module) - representation(enc, without_ids, layer, module)).mean(0)
    return concept_rep - vector


def supervised_positions(enc: TextEncoder, ids: torch.Tensor, names: list[str], positions: str) -> torch.Tensor:
    """[N, T, 1] float mask of supervised token positions: "all" (the paper), "no-bos" (all but the start token,
    which is the same for every prompt), "concept" (from the concept's first token on: the only positions that
    can see it under the causal mask) or "concept+eos" (the concept's tokens and the end token only)."""
    mask = torch.ones(ids.shape[0], ids.shape[1], 1)
    if positions == "all":
        return mask
    if positions == "no-bos":
        if enc.is_clip:  # T5 has no start token
            mask[:, 0] = 0
        return mask
    mask.zero_()
    for row, token_ids in enumerate(ids.tolist()):
        span = concept_span(enc, token_ids, names)
        if span is None:
            raise HirmError(f"positions {positions}: a prompt does not contain the concept's tokens; every "
                            "template must include the concept")
        if positions == "concept":
            mask[row, span[0]:] = 1
        else:
            mask[row, span[0] : span[1] + 1] = 1
            mask[row, _eos_index(enc, token_ids, span[1])] = 1
    return mask


def _eos_index(enc: TextEncoder, token_ids: list[int], after: int) -> int:
    eos = enc.tokenizer.eos_token_id
    return next((i for i in range(after + 1, len(token_ids)) if token_ids[i] == eos), len(token_ids) - 1)


def _optim(c: HiRMConfig) -> OptimConfig:
    return OptimConfig(steps=c.steps, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay)


def _cos(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(F.cosine_similarity((a * mask).flatten(), (b * mask).flatten(), dim=0))


# presets by concept kind, from the authors' README / paper notes (HiRM-R steps; lr)
KIND_DEFAULTS: dict[str, dict] = {
    "object": {"steps": 15, "lr": 5e-5},
    "style": {"steps": 20, "lr": 5e-5},
    "nudity": {"steps": 50, "lr": 1e-4, "safe_pairs": NUDITY_SAFE_PAIRS},
}


def kind_preset(kind: str) -> dict:
    """HiRM-R / HiRM-S: the paper's steps and lr for a concept kind."""
    return dict(KIND_DEFAULTS[kind])


def no_kind_preset(kind: str) -> dict:
    """hirm's default method: one recipe for every kind."""
    raise HirmError(f"--kind {kind} sets the paper's per-kind steps and lr of hirm-r / hirm-s; hirm's default "
                    "method has one recipe for every kind: drop --kind, or pass --method hirm-r")

