"""A patch in the formats other tools load: `hirm export PATCH --model M --format clip|lora --out PATH`.

- `clip`: each patched text encoder alone, one safetensors file per encoder in the key layout of CLIP's published
  files (`text_model.encoder.layers.N...`), which is what ComfyUI's CLIPLoader / DualCLIPLoader read; named
  `clip_l`, `clip_h`, `clip_g` by the shapes ComfyUI tells them apart by, else by the component's name.
- `lora`: the patch's weight changes as a low-rank adapter, by truncated SVD at `rank`, in kohya's key layout
  (`lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight`, read by AUTOMATIC1111 / Forge,
  ComfyUI's LoraLoader and diffusers' `load_lora_weights`) or diffusers' (`text_encoder.text_model...lora_A
  .weight`). A LoRA holds no bias: the patch's bias changes are left out, and the export says what that costs.

Every file carries `format: pt`, the patch's own metadata (its concepts, method and the base fingerprints) and
what the export did; the export refuses a model whose weights are not the ones the patch was made from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from hirm.encoders import TextEncoder, resolve_model_path
from hirm.errors import HirmError
from hirm.io import atomic_dir, atomic_file
from hirm.patch import FORMAT, Patch

FORMATS = ("clip", "lora")
LORA_LAYOUTS = ("kohya", "diffusers")
# ComfyUI tells CLIP text encoders apart by depth (detect_te_model: layer 30 -> bigG, layer 22 -> ViT-H)
_CLIP_NAMES = {(768, 12): "clip_l", (1024, 24): "clip_h", (1280, 32): "clip_g"}
# prompts on which a LoRA's final representations are compared with the patch's, besides the concepts'
_OTHER_PROMPTS = ("a photo of a dog", "a city street at night", "a bowl of fruit on a table",
                  "a portrait of a woman, oil painting")


@dataclass
class ExportResult:
    files: list[Path]
    info: dict[str, Any] = field(default_factory=dict)  # per component: what was written, errors measured


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
    return {k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v.detach().cpu().contiguous()
            for k, v in encoder.model.state_dict().items()}


def clip_file_name(encoder: TextEncoder) -> str:
    config = encoder.model.config
    return _CLIP_NAMES.get((config.hidden_size, config.num_hidden_layers), encoder.name) + ".safetensors"


def export_clip(patch: Patch, encoders: list[TextEncoder], out: Path) -> ExportResult:
    """Write the patched encoders into folder `out`, one file per encoder (all or nothing)."""
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
    from hirm.eval.locality import final_states

    if layout not in LORA_LAYOUTS:
        raise HirmError(f"--lora-layout {layout!r}: use one of {', '.join(LORA_LAYOUTS)}")
    if rank < 1:
        raise HirmError(f"--rank {rank}: give a positive rank, e.g. 16")
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
    from hirm.eval.locality import final_states

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
    "export_clip",
    "export_lora",
    "lora_prefixes",
    "low_rank",
    "read_export_metadata",
    "text_components",
]
