"""HiRM: High-level Representation Misdirection (ICLR 2026).

Train only early text-encoder layers (layer 0 by default) so that the *final* layer's self-attention output
for prompts about the concept moves to a target: a fixed random tensor (HiRM-R) or the final-layer
representation of a semantic prompt such as a super-category (HiRM-S). Defaults follow the authors' code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from hirm.encoders import TextEncoder
from hirm.erase.loop import OptimConfig, optimise, temporarily
from hirm.erase.textenc import concept_span, representation, trainable_parameter_names
from hirm.errors import HirmError
from hirm.patch import SEP, Patch, fingerprint

# The paper's target scale: Frobenius norm 5000 over a 77 x 768 (CLIP ViT-L/14) tensor. Other encoder shapes
# get the same per-element scale, so the number keeps its meaning for CLIP-G (1280) or a small encoder.
REFERENCE_SHAPE = (77, 768)

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

    variant: str = "r"  # "r": random target; "s": semantic target (`target` prompt)
    steps: int = 50
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 1e-8
    seed: int = 42
    layers: str = "first-attn"  # preset name or layer indices "0" / "0,1"
    supervise_layer: int = -1  # final layer
    supervise_module: str = "self_attn.out_proj"  # its attention output, before the residual add
    target_norm: float = 5000.0  # HiRM-R: Frobenius norm on a 77x768 encoder (per-element scale elsewhere)
    target: str | None = None  # HiRM-S: the semantic prompt, e.g. "a painting"
    scale: float = 1.0  # HiRM-S: c, multiplies the semantic target
    # HiRM-S "safe direction" (the paper's nudity target): instead of a target prompt, pairs of prompts with
    # and without the concept; target = rep(concept prompt) - mean(rep(with) - rep(without))
    safe_pairs: tuple[tuple[str, str], ...] = ()
    templates: tuple[str, ...] = ("{}",)  # prompt set = templates x (concept + variants)
    variants: tuple[str, ...] = ()
    truncate: bool = False
    # Beyond the paper (all off in the paper's recipe): which token positions are supervised ("all", or
    # "concept": from the first concept token on, the only positions that can see it under the causal mask),
    # whether biases train (a bias shift moves every prompt alike), and a retain term that keeps the final
    # hidden states of unrelated prompts where they were.
    positions: str = "all"
    train_biases: bool = True
    retain_weight: float = 0.0
    retain_prompts: tuple[str, ...] = ()

    def prompts(self, concept: str) -> list[str]:
        names = [concept, *self.variants]
        return [t.format(n) for n in names for t in self.templates]

    def validate(self) -> None:
        if self.variant not in ("r", "s"):
            raise HirmError(f"HiRM variant {self.variant!r}: use 'r' (random target) or 's' (semantic target)")
        if self.variant == "s" and not (self.target and self.target.strip()) and not self.safe_pairs:
            raise HirmError("hirm-s needs a semantic target prompt: pass --target, e.g. --target 'a painting' "
                            "(or --safe-pair 'WITH|WITHOUT' for a safe direction)")
        if self.steps < 1:
            raise HirmError(f"--steps {self.steps}: need at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise HirmError(f"--lr {self.lr}: need a positive learning rate")
        if not all("{}" in t for t in self.templates):
            raise HirmError("every template needs a '{}' where the concept goes")
        if self.positions not in ("all", "concept"):
            raise HirmError(f"--positions {self.positions!r}: use 'all' (paper) or 'concept'")
        if self.retain_weight > 0 and not self.retain_prompts:
            raise HirmError("--retain-weight needs retain prompts (--retain-prompt, or a model that ships them)")


def random_target(shape: tuple[int, int], norm: float, seed: int) -> torch.Tensor:
    """U[0,1) tensor [1, T, d] scaled to `norm` (defined on 77x768) at the same per-element scale.

    Uniform, non-negative and seeded exactly as the authors' code (torch.rand, Frobenius normalisation).
    """
    t, d = shape
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((1, t, d), generator=g)
    per_element = norm / math.sqrt(REFERENCE_SHAPE[0] * REFERENCE_SHAPE[1])
    return u / u.norm() * per_element * math.sqrt(t * d)


def erase_hirm(encoders: list[TextEncoder], concept: str, config: HiRMConfig, progress: bool = True) -> Patch:
    """Run HiRM on each encoder; returns one patch with every encoder's changed tensors."""
    config.validate()
    prompts = config.prompts(concept)
    tensors: dict[str, torch.Tensor] = {}
    fingerprints: dict[str, str] = {}
    info: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    for enc in encoders:
        ids = enc.tokenize(prompts, truncate=config.truncate)
        names = trainable_parameter_names(enc, config.layers)
        if not config.train_biases:
            names = [n for n in names if not n.endswith(".bias")]
        mask = supervised_positions(enc, ids, [concept, *config.variants], config.positions)
        retain_ids = enc.tokenize(list(config.retain_prompts), truncate=True) if config.retain_weight > 0 else None
        with torch.no_grad():
            before = representation(enc, ids, config.supervise_layer, config.supervise_module)
            if config.variant == "r":
                target = random_target(tuple(before.shape[1:]), config.target_norm, config.seed)
            elif config.target:
                target_ids = enc.tokenize([config.target], truncate=config.truncate)
                target = config.scale * representation(enc, target_ids, config.supervise_layer,
                                                       config.supervise_module)
            else:
                target = config.scale * safe_direction_target(enc, before, config)
            target = target.to(before.dtype).expand_as(before)
            retain_target = enc.model(input_ids=retain_ids).last_hidden_state if retain_ids is not None else None

        def loss_fn(step: int, enc: TextEncoder = enc, ids: torch.Tensor = ids, target: torch.Tensor = target,
                    mask: torch.Tensor = mask, retain_ids: torch.Tensor | None = retain_ids,
                    retain_target: torch.Tensor | None = retain_target) -> torch.Tensor:
            h = representation(enc, ids, config.supervise_layer, config.supervise_module)
            loss = masked_mse(h, target, mask)
            if retain_ids is not None:
                kept = enc.model(input_ids=retain_ids).last_hidden_state
                loss = loss + config.retain_weight * F.mse_loss(kept, retain_target)
            return loss

        torch.manual_seed(config.seed)
        result = optimise(enc.model, names, loss_fn, _optim(config), desc=f"hirm-{config.variant} {enc.name}",
                          progress=progress)
        with torch.no_grad(), temporarily(enc.model, result.tensors):
            after = representation(enc, ids, config.supervise_layer, config.supervise_module)
        fingerprints[enc.name] = fingerprint(enc.model)
        tensors.update({f"{enc.name}{SEP}{n}": t.contiguous() for n, t in result.tensors.items()})
        seconds[enc.name] = result.seconds
        info[enc.name] = {
            "loss_first": result.losses[0],
            "loss_last": result.losses[-1],
            "cos_to_target_before": _cos(before, target, mask),
            "cos_to_target_after": _cos(after, target, mask),
            "relative_change": float(((after - before) * mask).norm() / (before * mask).norm()),
        }
    return Patch(tensors=tensors, concepts=[concept], method=f"hirm-{config.variant}",
                 config={**asdict(config), "prompts": prompts}, fingerprints=fingerprints, info=info,
                 seconds=seconds)


def safe_direction_target(enc: TextEncoder, concept_rep: torch.Tensor, config: HiRMConfig) -> torch.Tensor:
    """The concept prompts' representation minus the concept vector (Ring-A-Bell style: the mean difference
    of representations of prompts with and without the concept)."""
    with_ids = enc.tokenize([w for w, _ in config.safe_pairs], truncate=True)
    without_ids = enc.tokenize([wo for _, wo in config.safe_pairs], truncate=True)
    layer, module = config.supervise_layer, config.supervise_module
    vector = (representation(enc, with_ids, layer, module) - representation(enc, without_ids, layer, module)).mean(0)
    return concept_rep - vector


def supervised_positions(enc: TextEncoder, ids: torch.Tensor, names: list[str], positions: str) -> torch.Tensor:
    """[N, T, 1] float mask of supervised token positions."""
    mask = torch.ones(ids.shape[0], ids.shape[1], 1)
    if positions == "all":
        return mask
    starts = []
    for row in ids.tolist():
        span = concept_span(enc, row, names)
        if span is None:
            raise HirmError("--positions concept: a prompt does not contain the concept's tokens; every template "
                            "must include the concept")
        starts.append(span[0])
    pos = torch.arange(ids.shape[1])[None, :]
    return (pos >= torch.tensor(starts)[:, None]).float()[..., None]


def masked_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the supervised positions (all of them: exactly F.mse_loss)."""
    diff = (h - target) ** 2 * mask
    return diff.sum() / (mask.sum() * h.shape[-1])


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

