"""Erasure methods behind one entry point: `erase(model, concept, method=..., **overrides) -> Patch`.

Each method is a config dataclass (its paper's defaults) plus one function; `METHODS` registers them.
Text-encoder methods (HiRM, Diff-QuickFix) take the CLIP encoders (HiRM also T5 ones, where asked); denoiser
methods (ESD, UCE, RECE) take the pipeline. "a+b" (e.g. `hirm-r+esd-x`) runs each on the base model and merges
the patches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hirm.encoders import TextEncoder, find_text_encoders, load_text_encoders
from hirm.erase.advunlearn import AdvUnlearnConfig, erase_advunlearn
from hirm.erase.esd import ESDConfig, erase_esd
from hirm.erase.fewshot import FewShotConfig, erase_fewshot
from hirm.erase.hirm import GENERIC_TEMPLATES, KIND_DEFAULTS, HiRMConfig, erase_hirm, prepare_hirm
from hirm.erase.quickfix import QuickFixConfig, erase_quickfix
from hirm.erase.uce import UCEConfig, erase_uce
from hirm.errors import HirmError
from hirm.patch import Patch


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    run: Callable[..., Patch]
    fixed: dict[str, Any]  # config values that define the method (e.g. HiRM's variant)
    summary: str
    takes: str = "encoders"  # what `run` takes: "encoders" (the CLIP encoders) or "pipeline" (e.g. to use the UNet)
    edits_t5: bool = False  # whether `run` also works on T5 encoders (--encoder all / a T5 component name)
    many_concepts: bool = False  # whether `run` erases a list of concepts in one optimisation
    # fills the config's model-dependent defaults (e.g. HiRM's retain set) from the encoders and concepts
    prepare: Callable[[Any, list[TextEncoder], list[str]], Any] | None = None


METHODS: dict[str, Method] = {
    "hirm": Method("hirm", HiRMConfig, erase_hirm, {"variant": "u"},
                   "HiRM, hirm's default: final hidden states misdirected past the prompt's own concept-free version",
                   edits_t5=True, many_concepts=True, prepare=prepare_hirm),
    "hirm-r": Method("hirm-r", HiRMConfig, erase_hirm, {"variant": "r"},
                     "HiRM, final-layer representation misdirected to a random target", edits_t5=True,
                     many_concepts=True, prepare=prepare_hirm),
    "hirm-s": Method("hirm-s", HiRMConfig, erase_hirm, {"variant": "s"},
                     "HiRM, final-layer representation misdirected to a semantic prompt (--target)", edits_t5=True,
                     many_concepts=True, prepare=prepare_hirm),
    "quickfix": Method("quickfix", QuickFixConfig, erase_quickfix, {},
                       "Diff-QuickFix: closed-form edit of text-encoder layer 0, supervised at layer 0"),
    "esd-x": Method("esd-x", ESDConfig, erase_esd, {"train": "xattn"},
                    "ESD-x: UNet cross-attention fine-tuned with negative guidance", "pipeline"),
    "esd-u": Method("esd-u", ESDConfig, erase_esd, {"train": "noxattn"},
                    "ESD-u: UNet non-cross-attention weights fine-tuned with negative guidance", "pipeline"),
    "uce": Method("uce", UCEConfig, erase_uce, {"epochs": 0},
                  "UCE: closed-form edit of cross-attention keys/values, other concepts preserved", "pipeline"),
    "rece": Method("rece", UCEConfig, erase_uce, {},
                   "RECE: UCE plus closed-form removal of adversarial embeddings (--epochs rounds)", "pipeline"),
    "advunlearn": Method("advunlearn", AdvUnlearnConfig, erase_advunlearn, {},
                         "AdvUnlearn: text encoder trained against adversarial prefix tokens, with a retain term",
                         "pipeline"),
    "fewshot": Method("fewshot", FewShotConfig, erase_fewshot, {},
                      "Few-shot erasing: text encoder trained to raise the denoising loss on a few concept images",
                      "pipeline"),
}
# method-specific defaults that are not the dataclass's (RECE shares UCE's config)
# (hirm's own method: its whole recipe, on every encoder; measured on MiniCanvas, docs/erasure.md)
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "rece": {"epochs": 3},
    "hirm": {"supervise_module": "final", "margin": 1.0, "loss_scale": 1000.0, "templates": GENERIC_TEMPLATES,
             "context_prompts": 8, "retain_weight": 1000.0, "lr": 1e-3, "steps": 200},
}


# hirm's recipe where it departs from the paper's, per model family (the config dataclasses' defaults and the
# kind presets are the papers' values); `paper_defaults=True` / `--paper-defaults` drops these. Real CLIP
# encoders get the paper's recipe, under which the paper measured local erasure; the small MiniCanvas encoder
# needs a retain term to be local. See docs/locality.md for the measurements.
_MINICANVAS_HIRM = {"retain_weight": 1000.0, "lr": 1e-3, "steps": 50, "robust_vocabulary": "world"}
HIRM_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "minicanvas": {"hirm-r": _MINICANVAS_HIRM, "hirm-s": _MINICANVAS_HIRM, "hirm": {"robust_vocabulary": "world"}},
}


def make_config(method: str, kind: str | None = None, paper_defaults: bool = False, family: str | None = None,
                **overrides: Any):
    """The method's config: the paper's defaults, its preset for the concept `kind`, hirm's recipe for the
    model `family` (unless `paper_defaults`), then explicit overrides."""
    if method not in METHODS:
        raise HirmError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    spec = METHODS[method]
    values: dict[str, Any] = dict(METHOD_DEFAULTS.get(method, {}))
    if kind is not None:
        if kind not in KIND_DEFAULTS:
            raise HirmError(f"--kind {kind!r}: use one of {', '.join(KIND_DEFAULTS)}")
        if method == "hirm":
            raise HirmError(f"--kind {kind} sets the paper's per-kind steps and lr of hirm-r / hirm-s; hirm's "
                            "default method has one recipe for every kind: drop --kind, or pass --method hirm-r")
        if spec.config_cls is HiRMConfig:
            values.update(KIND_DEFAULTS[kind])
        elif spec.config_cls is FewShotConfig and kind in ("object", "style"):
            values["concept_type"] = kind  # its prompt templates
    if not paper_defaults and family is not None:
        values.update(HIRM_DEFAULTS.get(family, {}).get(method, {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    clash = sorted(k for k, v in spec.fixed.items() if k in values and values[k] != v)
    if clash:
        raise HirmError(f"{method} fixes {clash[0]}={spec.fixed[clash[0]]!r} (it is what makes it {method}): drop "
                        "that option, or choose the method with the value you want (`hirm methods` lists them)")
    values.update(spec.fixed)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise HirmError(f"{method} has no option {unknown[0]!r}; options: {', '.join(sorted(fields))}")
    return spec.config_cls(**values)


def erase(model: Any, concept: str | list[str], method: str = "hirm", encoder: str | list[str] | None = None,
          kind: str | None = None, paper_defaults: bool = False, progress: bool = True, **overrides: Any) -> Patch:
    """Erase `concept` (or a list of concepts, HiRM only: one optimisation) from `model` (a pipeline, a
    `TextEncoder` list, or a path / id) and return the patch.

    `encoder` picks text encoders: None / "clip" (every CLIP encoder), "all" (T5 too) or component names;
    `kind` ("object", "style", "nudity") applies the paper's per-kind steps and lr; other keyword arguments
    override config fields.
    `method` may join methods with "+": each runs on the base model and one patch holds both edits. An
    override then goes to every part that has that option; one keyed "PART.OPTION" (e.g. `**{"esd-x.steps":
    200}`, the CLI's `--set esd-x.steps=200`) goes to that part only.
    """
    concepts = [concept] if isinstance(concept, str) else list(concept)
    if not concepts or not all(isinstance(c, str) and c.strip() for c in concepts):
        raise HirmError("the concept is empty: pass the text to erase, e.g. --concept 'Van Gogh'")
    concepts = list(dict.fromkeys(c.strip() for c in concepts))
    concept = concepts[0] if len(concepts) == 1 else concepts
    parts = method_parts(method)
    if len(concepts) > 1 and not all(METHODS[p].many_concepts for p in parts):
        raise HirmError(f"{method} erases one concept per run; several concepts in one patch: use hirm, hirm-r or "
                        "hirm-s")
    scoped: dict[str, dict[str, Any]] = {}
    for key in [k for k in overrides if "." in k]:
        part, _, field = key.rpartition(".")
        if part not in parts:
            raise HirmError(f"option {key!r}: {part!r} is not part of {method}")
        scoped.setdefault(part, {})[field] = overrides.pop(key)
    if len(parts) > 1:
        fields = {p: {f.name for f in dataclasses.fields(METHODS[p].config_cls)} for p in parts}
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
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            from hirm.encoders import load_pipeline

            model = load_pipeline(model)
        if isinstance(model, list):
            raise HirmError(f"{method} edits the denoiser: pass the whole pipeline, not only its text encoder")
        config = make_config(method, kind=kind, paper_defaults=paper_defaults, family=model_family(model),
                             **overrides)
        return spec.run(model, concept, config, progress=progress)
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        encoders = load_text_encoders(model, which=encoder)
    else:
        encoders = find_text_encoders(model, which=encoder)
    t5 = [e.name for e in encoders if not e.is_clip]
    if t5 and not spec.edits_t5:
        raise HirmError(f"{method} edits CLIP encoders only, not the T5 encoder {t5[0]!r}: pass --encoder clip")
    config = make_config(method, kind=kind, paper_defaults=paper_defaults, family=model_family(encoders),
                         **overrides)
    if spec.prepare is not None:
        config = spec.prepare(config, encoders, concepts)
    return spec.run(encoders, concept, config, progress=progress)


def method_parts(method: str) -> list[str]:
    """The registered methods that `method` ("uce" or "hirm-r+uce") joins; an unknown name is an error."""
    parts = method.split("+")
    for name in parts:
        if name not in METHODS:
            raise HirmError(f"unknown method {name!r}; available: {', '.join(METHODS)} (join two with '+')")
    return parts


def model_family(model: Any) -> str | None:
    """"minicanvas" when every CLIP encoder of `model` is the shipped MiniCanvas one, else None (real CLIP)."""
    from hirm.minicanvas import registry

    encoders = model if isinstance(model, list) else find_text_encoders(model)
    if encoders and all(registry.is_minicanvas(e.model) for e in encoders):
        return "minicanvas"
    return None


__all__ = ["METHODS", "AdvUnlearnConfig", "ESDConfig", "FewShotConfig", "HiRMConfig", "Method", "QuickFixConfig",
           "TextEncoder", "UCEConfig", "erase", "make_config", "method_parts"]
