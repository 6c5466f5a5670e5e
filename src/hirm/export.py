"""A patch in the formats other tools load: `hirm export PATCH --model M --format clip|lora --out PATH`.

- `clip`: each patched text encoder alone, one safetensors file per encoder in the key layout of CLIP's published
  files (`text_model.encoder.layers.N...`), which is what ComfyUI's CLIPLoader / DualCLIPLoader read; named
  `clip_l`, `clip_h`, `clip_g` by the shapes ComfyUI tells them apart by, else by the component's name.
- `lora`: the patch's weight changes as a low-rank adapter, by truncated SVD at `rank`, in kohya's key layout
  (`lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight`, read by AUTOMATIC1111 / Forge,
  ComfyUI's LoraLoader and diffusers' `load_lora_weights`) or diffusers' (`text_encoder.text_model...lora_A
  .weight`). A LoRA holds no bias: the patch's bias changes are left out, and the export says what that costs.

- `checkpoint`: a single-file checkpoint in the original (non-diffusers) layout, AUTOMATIC1111 / Forge's and
  ComfyUI's CheckpointLoader's input: the user's own checkpoint (`--checkpoint`) with the patched tensors
  written in place. Which of its keys hold a patched tensor is found by running diffusers' own single-file
  conversion (the one `from_single_file` uses) on index-valued copies of them, so no key table is written here.

Every file carries `format: pt`, the patch's own metadata (its concepts, method and the base fingerprints) and
what the export did; the export refuses a model whose weights are not the ones the patch was made from.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hirm.encoders import TextEncoder, resolve_model_path
from hirm.errors import HirmError
from hirm.eval.locality import final_states
from hirm.io import atomic_dir, atomic_file
from hirm.patch import FORMAT, Patch, fingerprint

FORMATS = ("clip", "lora", "checkpoint")
LORA_LAYOUTS = ("kohya", "diffusers")
# ComfyUI tells CLIP text encoders apart by depth (detect_te_model: layer 30 -> bigG, layer 22 -> ViT-H)
_CLIP_NAMES = {(768, 12): "clip_l", (1024, 24): "clip_h", (1280, 32): "clip_g"}
# prompts on which a LoRA's final representations are compared with the patch's, besides the concepts'
_OTHER_PROMPTS = ("a photo of a dog", "a city street at night", "a bowl of fruit on a table",
                  "a portrait of a woman, oil painting")


logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    files: list[Path]
    info: dict[str, Any] = field(default_factory=dict)  # per component: what was written, errors measured


def text_part(patch: Patch, encoders: list[TextEncoder]) -> Patch:
    """The part of `patch` that edits `encoders`, which is what every format here carries: a denoiser half (a
    `--robust` patch's UNet edit) is left out, and the log says so."""
    names = [e.name for e in encoders]
    left = [c for c in patch.components if c not in names]
    if left:
        logger.warning("the patch's %s edit is not in this export (the formats hold text encoders): apply the patch "
                       "with hirm (hirm apply --out DIR) to keep it", ", ".join(left))
    return patch.only(names)


def _metadata(patch: Patch, export: dict[str, Any]) -> dict[str, str]:
    return {"format": "pt", **patch.metadata(), "hirm_export": json.dumps(export, sort_keys=True)}


def _module_name(name: str) -> str:
    """A parameter's module path in transformers' saved layout: transformers 5 names CLIP's modules without the
    `text_model.` that its files (and every other tool) keep."""
    return name if name.startswith("text_model.") else "text_model." + name


def clip_state_dict(encoder: TextEncoder) -> dict[str, torch.Tensor]:
    """The encoder's weights keyed as CLIP's published files are (`text_model.…`, `text_projection.weight`), the
    layout ComfyUI reads; transformers 5 keeps it when saving CLIPTextModelWithProjection, not CLIPTextModel."""
    if not encoder.is_clip:
        return {k: v.detach().cpu().contiguous() for k, v in encoder.model.state_dict().items()}
    return {k if k.startswith("text_projection.") else _module_name(k): v.detach().cpu().contiguous()
            for k, v in encoder.model.state_dict().items()}


def clip_file_name(encoder: TextEncoder) -> str:
    config = encoder.model.config
    return _CLIP_NAMES.get((config.hidden_size, config.num_hidden_layers), encoder.name) + ".safetensors"


def export_clip(patch: Patch, encoders: list[TextEncoder], out: Path) -> ExportResult:
    """Write the patched encoders into folder `out`, one file per encoder (all or nothing)."""
    patch = text_part(patch, encoders)
    files, info = [], {}
    with patch.applied(encoders), atomic_dir(out) as tmp:
        for enc in encoders:
            name = clip_file_name(enc)
            tensors = clip_state_dict(enc)
            export = {"format": "clip", "component": enc.name, "class": type(enc.model).__name__}
            save_file(tensors, str(tmp / name), metadata=_metadata(patch, export))
            files.append(out / name)
            info[enc.name] = {"file": name, "tensors": len(tensors),
                              "dtype": str(next(iter(tensors.values())).dtype).replace("torch.", "")}
    return ExportResult(files, info)


def lora_prefixes(components: list[str], text_components: list[str], layout: str) -> dict[str, str]:
    """Each patched component's key prefix: kohya numbers the text encoders (`lora_te1_`, `lora_te2_`) when the
    model has more than one, else `lora_te_`; diffusers keys start with the component's name."""
    if layout == "diffusers":
        return {c: c + "." for c in components}
    if len(text_components) <= 1:
        return {c: "lora_te_" for c in components}
    ordered = sorted(text_components, key=lambda n: (len(n), n))  # text_encoder, text_encoder_2, text_encoder_3
    return {c: f"lora_te{ordered.index(c) + 1}_" for c in components}


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) with up @ down the best rank-`rank` approximation of `delta` (truncated SVD; the singular
    values split evenly between the two factors)."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    return (u[:, :r] * root).float().contiguous(), (root[:, None] * vh[:r]).float().contiguous()


def export_lora(patch: Patch, encoders: list[TextEncoder], text_components: list[str], out: Path, rank: int = 16,
                layout: str = "kohya", concepts_prompts: list[str] | None = None) -> ExportResult:
    """Write the patch's weight changes as one LoRA file at `out`; measure, per component, the relative error of
    the weight change (Frobenius) and of the final representations against the full patch."""
    if layout not in LORA_LAYOUTS:
        raise HirmError(f"--lora-layout {layout!r}: use one of {', '.join(LORA_LAYOUTS)}")
    if rank < 1:
        raise HirmError(f"--rank {rank}: give a positive rank, e.g. 16")
    patch = text_part(patch, encoders)
    t5 = [e.name for e in encoders if not e.is_clip]
    if t5:
        raise HirmError(f"the patch edits the T5 encoder {t5[0]!r}: a text-encoder LoRA here covers CLIP encoders; "
                        "export it with --format clip, or make the patch with --encoder clip")
    prefixes = lora_prefixes([e.name for e in encoders], text_components, layout)
    prompts = [f"a photo of {c}" for c in patch.concepts] + [f"a painting of {c}" for c in patch.concepts]
    prompts += list(concepts_prompts or []) + list(_OTHER_PROMPTS)
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {}
    with torch.no_grad():
        for enc in encoders:
            params = dict(enc.model.named_parameters())
            changed = patch.component_tensors(enc.name)
            before = final_states(enc, prompts)[0]
            weights, dropped = {}, {}
            for name, new in changed.items():
                delta = new.float() - params[name].detach().float().cpu()
                (weights if delta.ndim == 2 else dropped)[name] = delta
            err_num = err_den = 0.0
            low: dict[str, torch.Tensor] = {}
            for name, delta in weights.items():
                up, down = low_rank(delta, rank)
                module = _module_name(name.removesuffix(".weight"))
                if layout == "kohya":
                    key = prefixes[enc.name] + module.replace(".", "_")
                    tensors[key + ".lora_up.weight"], tensors[key + ".lora_down.weight"] = up, down
                    tensors[key + ".alpha"] = torch.tensor(float(up.shape[1]))  # scale alpha / rank = 1
                else:
                    key = prefixes[enc.name] + module
                    tensors[key + ".lora_B.weight"], tensors[key + ".lora_A.weight"] = up, down
                low[name] = up @ down
                err_num += float((delta - low[name]).pow(2).sum())
                err_den += float(delta.pow(2).sum())
            with patch.applied(encoders):
                full = final_states(enc, prompts)[0]
            lora_error = _representation_error(enc, params, low, before, full, prompts)
            no_bias_error = _representation_error(enc, params, weights, before, full, prompts)
            n = len(patch.concepts) * 2
            info[enc.name] = {
                "rank": rank, "weights": len(weights), "weight_error": (err_num / err_den) ** 0.5 if err_den else 0.0,
                "dropped": sorted(dropped), "representation_error_concept": lora_error[:n].mean().item(),
                "representation_error_other": lora_error[n:].mean().item(),
                # the bias changes' share: every weight change kept exactly, the biases left out
                "representation_error_without_biases": no_bias_error.mean().item()}
    export = {"format": "lora", "layout": layout, "rank": rank, "components": sorted(info)}
    metadata = _metadata(patch, export)
    if layout == "kohya":  # what kohya's scripts write; AUTOMATIC1111 reads it for its UI
        metadata.update({"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                         "ss_network_alpha": str(rank)})
    with atomic_file(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return ExportResult([out], info)


def _representation_error(enc: TextEncoder, params: dict[str, torch.nn.Parameter], deltas: dict[str, torch.Tensor],
                          before: torch.Tensor, full: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Per prompt, |h(base + deltas) - h(patch)| / |h(patch) - h(base)|: what the approximation misses of the
    patch's own change of the final hidden states."""
    originals = {n: params[n].detach().clone() for n in deltas}
    try:
        for n, d in deltas.items():
            params[n].add_(d.to(params[n].dtype).to(params[n].device))
        approx = final_states(enc, prompts)[0]
    finally:
        for n, t in originals.items():
            params[n].copy_(t)
    moved = (full - before).flatten(1).norm(dim=1).clamp_min(1e-12)
    return (approx - full).flatten(1).norm(dim=1) / moved


# single-file prefixes of CLIP text encoders, by the converter of diffusers' single-file loading that reads them
_LDM_OPEN_CLIP_PREFIXES = ("cond_stage_model.model.", "conditioner.embedders.1.model.",
                           "conditioner.embedders.0.model.")
_LDM_CLIP_EXTRA_PREFIXES = ("text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer.")
_INDEX_BITS = 40  # a probe value: key number << 40 | flat position


def _single_file_sources(checkpoint: dict[str, torch.Tensor], encoder: TextEncoder,
                         names: list[str]) -> dict[str, tuple[str, torch.Tensor]]:
    """For each of `names` (the encoder's parameter names), the checkpoint key holding it and the flat positions
    of its elements there, found by converting index-valued copies of the checkpoint's layer tensors with
    diffusers' single-file converters and keeping the conversion that yields all of `names` at their shapes."""
    from diffusers.loaders import single_file_utils as sf

    params = dict(encoder.model.named_parameters())
    wanted = {_module_name(n): n for n in names}
    layers = {int(n.split("layers.")[1].split(".")[0]) for n in names if "layers." in n}
    marks = tuple(f"layers.{i}." for i in layers) + tuple(f"resblocks.{i}." for i in layers)
    keys = [k for k in checkpoint if any(m in k for m in marks)]
    probe: dict[str, torch.Tensor] = {k: v for k, v in checkpoint.items() if k.endswith("text_projection")}
    for i, k in enumerate(keys):
        probe[k] = (torch.arange(checkpoint[k].numel(), dtype=torch.int64) + (i << _INDEX_BITS)).view(
            checkpoint[k].shape)
    conversions = [sf.convert_ldm_clip_checkpoint(probe, p) for p in _LDM_CLIP_EXTRA_PREFIXES]
    conversions += [sf.convert_open_clip_checkpoint(encoder.model, probe, prefix=p) for p in _LDM_OPEN_CLIP_PREFIXES
                    if any(k.startswith(p) for k in probe)]
    if any(k.startswith(tuple(sf.LDM_CLIP_PREFIX_TO_REMOVE)) for k in probe):
        conversions.append(sf.convert_ldm_clip_checkpoint(probe))
    for converted in conversions:
        if all(k in converted and converted[k].shape == params[n].shape and converted[k].dtype == torch.int64
               for k, n in wanted.items()):
            out = {}
            for k, n in wanted.items():
                index = converted[k].flatten()
                source = {int(v) >> _INDEX_BITS for v in index.unique()}
                if len(source) != 1:
                    raise HirmError(f"{encoder.name}: {n} comes from several checkpoint tensors; not supported")
                key = keys[source.pop()]
                out[n] = (key, index & ((1 << _INDEX_BITS) - 1))
            return out
    raise HirmError(f"the checkpoint holds no text encoder with {encoder.name}'s layer shapes (diffusers' "
                    "single-file conversion finds none): pass the checkpoint this model was converted from")


def export_checkpoint(patch: Patch, encoders: list[TextEncoder], model_root: Path, checkpoint: Path,
                      out: Path) -> ExportResult:
    """Write `checkpoint` (a single-file safetensors checkpoint of the model) with the patched tensors in place.
    Refused unless diffusers' own single-file loader builds, from the checkpoint, text encoders with the weights
    the patch was made from (its fingerprints)."""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from safetensors import SafetensorError, safe_open

    if checkpoint.suffix != ".safetensors":
        raise HirmError(f"--checkpoint {checkpoint}: give a .safetensors single-file checkpoint (never pickle)")
    patch = text_part(patch, encoders)
    try:
        with safe_open(str(checkpoint), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(checkpoint))
    except (OSError, ValueError, SafetensorError) as e:
        raise HirmError(f"--checkpoint {checkpoint}: not a readable safetensors file ({e})") from None
    info: dict[str, Any] = {}
    for enc in encoders:
        if not enc.is_clip:
            raise HirmError(f"the patch edits the T5 encoder {enc.name!r}: a checkpoint export covers CLIP encoders")
        try:  # what from_single_file would load for this component
            loaded = create_diffusers_clip_model_from_ldm(type(enc.model), tensors, subfolder=enc.name,
                                                          config=str(model_root), local_files_only=True)
        except (ValueError, KeyError, OSError) as e:
            raise HirmError(f"diffusers cannot read {enc.name} from --checkpoint {checkpoint}: {e}") from None
        got = fingerprint(loaded.float())
        if got != patch.fingerprints.get(enc.name):
            raise HirmError(f"--checkpoint {checkpoint}: its {enc.name} is not the one the patch was made from "
                            "(fingerprints differ): pass the checkpoint of the model the patch was made on")
        changed = patch.component_tensors(enc.name)
        sources = _single_file_sources(tensors, enc, list(changed))
        for name, value in changed.items():
            key, positions = sources[name]
            target = tensors[key].clone()
            target.view(-1)[positions] = value.flatten().to(target.dtype)
            tensors[key] = target
        info[enc.name] = {"keys": sorted({k for k, _ in sources.values()}), "tensors": len(changed)}
    export = {"format": "checkpoint", "source": checkpoint.name, "components": sorted(info)}
    with atomic_file(out) as tmp:
        save_file(tensors, str(tmp), metadata={**meta, **_metadata(patch, export)})
    return ExportResult([out], info)


def text_components(model: Any) -> list[str]:
    """The names of a model's text encoders: from a pipeline folder's model_index.json, or an in-memory pipeline."""
    if isinstance(model, (str, Path)):
        index = resolve_model_path(str(model)) / "model_index.json"
        names = json.loads(index.read_text()) if index.exists() else {"text_encoder": None}
        return [n for n in names if n.startswith("text_encoder")]
    return [n for n in getattr(model, "components", {}) if n.startswith("text_encoder")]


def read_export_metadata(path: Path) -> dict[str, Any]:
    """The hirm patch metadata and export record of an exported file."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return {"patch": json.loads(meta.get(FORMAT, "{}")), "export": json.loads(meta.get("hirm_export", "{}")),
            "format": meta.get("format")}


__all__ = [
    "FORMATS",
    "LORA_LAYOUTS",
    "ExportResult",
    "export_checkpoint",
    "export_clip",
    "export_lora",
    "lora_prefixes",
    "low_rank",
    "read_export_metadata",
    "text_components",
]
