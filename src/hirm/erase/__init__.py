"""Erasure methods behind one entry point: `erase(model, concept, method=..., **overrides) -> Patch`.

Each method is a config dataclass (its paper's defaults) plus one function; `METHODS` registers them.
Text-encoder methods (HiRM, Diff-QuickFix) take the CLIP encoders (HiRM also T5 ones, where asked); denoiser
methods (ESD, UCE, RECE) take the pipeline. "a+b" (e.g. `hirm-r+esd-x`) runs each on the base model and merges
the patches. `robust_method` makes the robust preset's two-half combination.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from hirm.encoders import (
    TextEncoder,
    find_text_encoders,
    is_path,
    load_pipeline,
    load_text_encoders,
    model_components,
)
from hirm.erase import fewshot
from hirm.erase import hirm as hirm_method
from hirm.erase.advunlearn import AdvUnlearnConfig, erase_advunlearn
from hirm.erase.denoiser import is_unet_pipeline
from hirm.erase.esd import ESDConfig, erase_esd
from hirm.erase.fewshot import FewShotConfig, erase_fewshot
from hirm.erase.hirm import GENERIC_TEMPLATES, KIND_DEFAULTS, HiRMConfig, erase_hirm, prepare_hirm
from hirm.erase.prompts import concept_list
from hirm.erase.quickfix import QuickFixConfig, erase_quickfix
from hirm.erase.uce import UCEConfig, erase_uce, through_denoiser
from hirm.errors import HirmError
from hirm.minicanvas import registry
from hirm.patch import Patch
from hirm.registry import Entry, Registry


@dataclass(frozen=True)
class Method(Entry):
    """An erasure method: `run(encoders_or_pipe, concept, config, progress=...) -> Patch`."""

    takes: str = "encoders"  # what `run` takes: "encoders" (the CLIP encoders) or "pipeline" (e.g. to use the UNet)
    edits_t5: bool = False  # whether `run` also works on T5 encoders (--encoder all / a T5 component name)
    many_concepts: bool = False  # whether `run` erases a list of concepts in one optimisation
    # defaults that are not the config dataclass's (e.g. RECE shares UCE's config with more rounds)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # hirm's recipe where it departs from the paper's, by model family (`paper_defaults` drops it)
    family_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # the config values for a concept kind ("object", "style", "nudity"); None: the kind changes nothing
    preset: Callable[[str], dict] | None = None
    # fills the config's model-dependent defaults (e.g. HiRM's retain set) from the encoders and concepts
    prepare: Callable[[Any, list[TextEncoder], list[str]], Any] | None = None

    def option_defaults(self) -> dict[str, Any]:
        return {**self.defaults, **self.fixed}


# Real CLIP encoders get the paper's HiRM recipe, under which the paper measured local erasure; the small
# MiniCanvas encoder needs a retain term to be local (docs/locality.md).
_MINICANVAS_HIRM = {"retain_weight": 1000.0, "lr": 1e-3, "steps": 50, "robust_vocabulary": "world"}
_HIRM = {"config_cls": HiRMConfig, "run": erase_hirm, "edits_t5": True, "many_concepts": True,
         "prepare": prepare_hirm}

METHODS: Registry[Method] = Registry("method", [
    # hirm's own method: its whole recipe, on every encoder; measured on MiniCanvas, docs/erasure.md
    Method("hirm", **_HIRM, fixed={"variant": "u"},
           summary="HiRM, hirm's default: final hidden states misdirected past the prompt's own concept-free version",
           defaults={"supervise_module": "final", "margin": 1.0, "loss_scale": 1000.0,
                     "templates": GENERIC_TEMPLATES, "context_prompts": 8, "retain_at": "trained",
                     "retain_weight": 3000.0, "lr": 1e-3, "steps": 100},
           family_defaults={"minicanvas": {"robust_vocabulary": "world"}}, preset=hirm_method.no_kind_preset),
    Method("hirm-r", **_HIRM, fixed={"variant": "r"},
           summary="HiRM, final-layer representation misdirected to a random target",
           family_defaults={"minicanvas": _MINICANVAS_HIRM}, preset=hirm_method.kind_preset),
    Method("hirm-s", **_HIRM, fixed={"variant": "s"},
           summary="HiRM, final-layer representation misdirected to a semantic prompt (--target)",
           family_defaults={"minicanvas": _MINICANVAS_HIRM}, preset=hirm_method.kind_preset),
    Method("quickfix", QuickFixConfig, erase_quickfix,
           "Diff-QuickFix: closed-form edit of text-encoder layer 0, supervised at layer 0", many_concepts=True),
    Method("esd-x", ESDConfig, erase_esd, "ESD-x: UNet cross-attention fine-tuned with negative guidance",
           fixed={"train": "xattn"}, takes="pipeline"),
    Method("esd-u", ESDConfig, erase_esd, "ESD-u: UNet non-cross-attention weights fine-tuned with negative guidance",
           fixed={"train": "noxattn"}, takes="pipeline"),
    Method("uce", UCEConfig, erase_uce,
           "UCE: closed-form edit of cross-attention keys/values, other concepts preserved",
           fixed={"epochs": 0}, takes="pipeline", many_concepts=True),
    Method("rece", UCEConfig, erase_uce,
           "RECE: UCE plus closed-form removal of adversarial embeddings (--epochs rounds)", takes="pipeline",
           defaults={"epochs": 3}, many_concepts=True),
    Method("advunlearn", AdvUnlearnConfig, erase_advunlearn,
           "AdvUnlearn: text encoder trained against adversarial prefix tokens, with a retain term", takes="pipeline"),
    Method("fewshot", FewShotConfig, erase_fewshot,
           "Few-shot erasing: text encoder trained to raise the denoising loss on a few concept images",
           takes="pipeline", preset=fewshot.kind_preset),
])


# The robust preset (`hirm erase --robust`): one patch with two halves. The denoiser half is this closed-form edit
# of the UNet's cross-attention with hirm's reference (each prompt's embeddings from the concept on map to the
# same prompt with the concept's words left out), made first, so that what reaches the denoiser without passing
# through the edited encoder layers (the base encoder's embeddings, a learnt input embedding) is misdirected. The
# text half is the method's, its targets aimed through the denoiser half (`uce.through_denoiser`): made
# independently, the two halves undo each other (measured in docs/attacks.md).
ROBUST_DENOISER = "uce"
ROBUST_DENOISER_OPTIONS: Mapping[str, Any] = {"reference": "unnamed", "templates": GENERIC_TEMPLATES,
                                              "context_prompts": 8}

log = logging.getLogger(__name__)


def robust_method(method: str, components: Collection[str]) -> tuple[str, dict[str, Any]]:
    """The robust preset of HiRM `method` on a model with these `components`: (the method joined with the denoiser
    half, that half's options scoped to it), or (`method`, {}) where the denoiser half cannot edit the model
    (SDXL, SD3 and Flux denoisers, text encoders alone)."""
    if "+" in method or "robust_rounds" not in METHODS.lookup(method).options():
        text = ", ".join(n for n, m in METHODS.items() if "robust_rounds" in m.options())
        raise HirmError(f"--robust adds a denoiser half to a HiRM text-encoder edit ({text}); {method} is not one "
                        "(it has its own defences, e.g. advunlearn, or already names its parts)")
    if not is_unet_pipeline(components):
        return method, {}
    return f"{method}+{ROBUST_DENOISER}", {f"{ROBUST_DENOISER}.{k}": v for k, v in ROBUST_DENOISER_OPTIONS.items()}


def _erase_robust(model: Any, concept: str | list[str], method: str, encoder, kind, paper_defaults: bool,
                  progress: bool, overrides: dict[str, Any]) -> Patch:
    """The robust preset: the denoiser half on the base model, then the text half aimed through it, merged."""
    if is_path(model):
        model = load_pipeline(model)
    components = model_components(model)
    joined, preset = robust_method(method, components)
    if joined == method:
        log.warning("--robust: the denoiser half (%s) edits Stable-Diffusion-1.x/2.x-style UNets; this model (%s) "
                    "gets the text-encoder half only, which inputs that bypass the text encoder (its base "
                    "embeddings, a learnt input embedding) undo", ROBUST_DENOISER, ", ".join(components) or "?")
        return erase(model, concept, method, encoder=encoder, kind=kind, paper_defaults=paper_defaults,
                     progress=progress, **overrides)
    # each half takes its own scoped options ("uce.erase_scale", "hirm.steps"; `erase` reads a part's scope)
    mine = {k: v for k, v in overrides.items() if k.startswith(f"{ROBUST_DENOISER}.")}
    denoiser = erase(model, concept, ROBUST_DENOISER, progress=progress, **{**preset, **mine})
    text = erase(model, concept, method, encoder=encoder, kind=kind, paper_defaults=paper_defaults, progress=progress,
                 aim={"text_encoder": through_denoiser(model, denoiser)},
                 **{k: v for k, v in overrides.items() if k not in mine})
    return Patch.merge([text, denoiser])


def make_config(method: str, kind: str | None = None, paper_defaults: bool = False, family: str | None = None,
                **overrides: Any):
    """The method's config: the paper's defaults, its preset for the concept `kind`, hirm's recipe for the
    model `family` (unless `paper_defaults`), then explicit overrides."""
    spec = METHODS.lookup(method)
    values: dict[str, Any] = dict(spec.defaults)
    if kind is not None:
        if kind not in KIND_DEFAULTS:
            raise HirmError(f"--kind {kind!r}: use one of {', '.join(KIND_DEFAULTS)}")
        if spec.preset is not None:
            values.update(spec.preset(kind))
    if not paper_defaults and family is not None:
        values.update(spec.family_defaults.get(family, {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return METHODS.config(method, values)


def erase(model: Any, concept: str | list[str], method: str = "hirm", encoder: str | list[str] | None = None,
          kind: str | None = None, paper_defaults: bool = False, progress: bool = True, robust: bool = False,
          aim: Mapping[str, Callable] | None = None, **overrides: Any) -> Patch:
    """Erase `concept` (or a list of concepts, HiRM only: one optimisation) from `model` (a pipeline, a
    `TextEncoder` list, or a path / id) and return the patch.

    `encoder` picks text encoders: None / "clip" (every CLIP encoder), "all" (T5 too) or component names;
    `kind` ("object", "style", "nudity") applies the paper's per-kind steps and lr; other keyword arguments
    override config fields.
    `method` may join methods with "+": each runs on the base model and one patch holds both edits. An
    override then goes to every part that has that option; one keyed "PART.OPTION" (e.g. `**{"esd-x.steps":
    200}`, the CLI's `--set esd-x.steps=200`) goes to that part only.
    `robust`: the robust preset (see ROBUST_DENOISER) on a pipeline; `--set uce.KEY=VALUE` reaches its denoiser
    half. `aim`: HiRM only, a map per encoder applied to its targets (the preset's text half).
    """
    concepts = concept_list(concept)
    if not concepts or not all(isinstance(c, str) and c.strip() for c in concepts):
        raise HirmError("the concept is empty: pass the text to erase, e.g. --concept 'Van Gogh'")
    concepts = list(dict.fromkeys(c.strip() for c in concepts))
    concept = concepts[0] if len(concepts) == 1 else concepts
    if robust:
        return _erase_robust(model, concept, method, encoder, kind, paper_defaults, progress, overrides)
    parts = method_parts(method)
    if len(concepts) > 1 and not all(METHODS[p].many_concepts for p in parts):
        several = ", ".join(n for n, m in METHODS.items() if m.many_concepts)
        raise HirmError(f"{method} erases one concept per run; several concepts in one patch: use one of {several}")
    scoped: dict[str, dict[str, Any]] = {}
    for key in [k for k in overrides if "." in k]:
        part, _, field = key.rpartition(".")
        if part not in parts:
            raise HirmError(f"option {key!r}: {part!r} is not part of {method}")
        scoped.setdefault(part, {})[field] = overrides.pop(key)
    if len(parts) > 1:
        fields = {p: set(METHODS[p].options()) for p in parts}
        unused = sorted(k for k, v in overrides.items() if v is not None and not any(k in f for f in fields.values()))
        if unused:
            raise HirmError(f"{method} has no option {unused[0]!r}")
        patches = [erase(model, concept, p, encoder=encoder, kind=kind, paper_defaults=paper_defaults,
                         progress=progress, **{k: v for k, v in overrides.items() if k in fields[p]},
                         **scoped.get(p, {}))
                   for p in parts]
        return Patch.merge(patches)
    overrides.update(scoped.get(method, {}))
    spec = METHODS[method]
    if spec.takes == "pipeline":
        if is_path(model):
            model = load_pipeline(model)
        if isinstance(model, list):
            raise HirmError(f"{method} edits the denoiser: pass the whole pipeline, not only its text encoder")
        config = make_config(method, kind=kind, paper_defaults=paper_defaults, family=model_family(model),
                             **overrides)
        return spec.run(model, concept, config, progress=progress)
    load = load_text_encoders if is_path(model) else find_text_encoders
    encoders = load(model, which=encoder)
    t5 = [e.name for e in encoders if not e.is_clip]
    if t5 and not spec.edits_t5:
        raise HirmError(f"{method} edits CLIP encoders only, not the T5 encoder {t5[0]!r}: pass --encoder clip")
    config = make_config(method, kind=kind, paper_defaults=paper_defaults, family=model_family(encoders),
                         **overrides)
    if spec.prepare is not None:
        config = spec.prepare(config, encoders, concepts)
    return spec.run(encoders, concept, config, progress=progress, **({"aim": aim} if aim else {}))


def method_parts(method: str) -> list[str]:
    """The registered methods that `method` ("uce" or "hirm-r+uce") joins; an unknown name is an error."""
    parts = method.split("+")
    for name in parts:
        if name not in METHODS:
            raise HirmError(f"unknown method {name!r}; available: {', '.join(METHODS)} (join two with '+')")
    return parts


def model_family(model: Any) -> str | None:
    """"minicanvas" when every CLIP encoder of `model` is the shipped MiniCanvas one, else None (real CLIP)."""
    encoders = model if isinstance(model, list) else find_text_encoders(model)
    if encoders and all(registry.is_minicanvas(e.model) for e in encoders):
        return "minicanvas"
    return None


__all__ = ["METHODS", "AdvUnlearnConfig", "ESDConfig", "FewShotConfig", "HiRMConfig", "Method", "QuickFixConfig",
           "TextEncoder", "UCEConfig", "erase", "make_config", "method_parts", "robust_method"]
