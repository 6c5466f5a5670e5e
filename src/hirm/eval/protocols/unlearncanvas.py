"""UnlearnCanvas: "A {object} image in {style} style." for 51 styles x 20 objects at seed 188 on an
UnlearnCanvas-finetuned pipeline, judged by the benchmark's style and object classifiers.

UA = share of the target concept's images NOT classified as it; IRA = accuracy on the other classes of the
target's domain; CRA = accuracy of the other domain's classifier (objects for a style target, styles for an
object target). A classifier is either the benchmark's own checkpoint (timm ViT-L/16, `{"model_state_dict": ...}`
in a .pth file: its tensors are read with `torch.load(weights_only=True)`, which loads tensors only and runs no
code, and mapped onto `transformers`' `ViTForImageClassification`) or a `transformers` image-classification folder
whose `id2label` names the classes.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from hirm.errors import HirmError
from hirm.eval.protocols.base import Protocol
from hirm.eval.protocols.prompts import Item

# the benchmark's class order (its classifier heads are indexed by it)
STYLES = (
    "Abstractionism", "Artist_Sketch", "Blossom_Season", "Bricks", "Byzantine", "Cartoon", "Cold_Warm",
    "Color_Fantasy", "Comic_Etch", "Crayon", "Cubism", "Dadaism", "Dapple", "Defoliation", "Early_Autumn",
    "Expressionism", "Fauvism", "French", "Glowing_Sunset", "Gorgeous_Love", "Greenfield", "Impressionism",
    "Ink_Art", "Joy", "Liquid_Dreams", "Magic_Cube", "Meta_Physics", "Meteor_Shower", "Monet", "Mosaic",
    "Neon_Lines", "On_Fire", "Pastel", "Pencil_Drawing", "Picasso", "Pop_Art", "Red_Blue_Ink", "Rust",
    "Seed_Images", "Sketch", "Sponge_Dabbed", "Structuralism", "Superstring", "Surrealism", "Ukiyoe", "Van_Gogh",
    "Vibrant_Flow", "Warm_Love", "Warm_Smear", "Watercolor", "Winter",
)
OBJECTS = (
    "Architectures", "Bears", "Birds", "Butterfly", "Cats", "Dogs", "Fishes", "Flame", "Flowers", "Frogs", "Horses",
    "Human", "Jellyfish", "Rabbits", "Sandwiches", "Sea", "Statues", "Towers", "Trees", "Waterfalls",
)


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def find_concept(concept: str) -> tuple[str, str]:
    """("style" | "object", canonical name) of an UnlearnCanvas class; accepts "Van Gogh" or "van_gogh"."""
    for domain, names in (("style", STYLES), ("object", OBJECTS)):
        for n in names:
            if _norm(n) == _norm(concept):
                return domain, n
    raise HirmError(f"--concept {concept!r} is not an UnlearnCanvas class; styles: {', '.join(STYLES)}; "
                    f"objects: {', '.join(OBJECTS)}")


def grid_items(seed: int, limit: int | None = None) -> list[Item]:
    items = [Item(f"{s}_{o}_seed{seed}", f"A {o} image in {s.replace('_', ' ')} style.", seed,
                  meta={"style": s, "object": o})
             for s in STYLES for o in OBJECTS]
    return items[:limit] if limit else items


class _Classifier:
    """A transformers image classifier whose labels are mapped onto one of the benchmark's class lists."""

    def __init__(self, path: Path, names: tuple[str, ...], option: str, device: torch.device):
        from transformers import AutoModelForImageClassification

        if Path(path).is_file():
            self.labels = list(names)
            model = vit_from_timm_checkpoint(path, names, option)
        else:
            self.labels = _labels(path, names, option)
            model = AutoModelForImageClassification.from_pretrained(path, local_files_only=True)
        self.model = model.to(device).eval()
        self.size = int(getattr(self.model.config, "image_size", 224))

    @torch.no_grad()
    def predict(self, images: list) -> list[str]:
        # the benchmark's transform: resize to the model's size, [0, 1], normalise with mean = std = 0.5
        arrays = [np.asarray(im.convert("RGB").resize((self.size, self.size))) for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
        logits = self.model(pixel_values=x.to(self.model.device, self.model.dtype)).logits
        return [self.labels[i] for i in logits.argmax(-1).tolist()]


def _labels(folder: Path, names: tuple[str, ...], option: str) -> list[str]:
    """The classifier's labels (config.id2label) in head order, as the benchmark's class names."""
    from transformers import AutoConfig

    id2label = AutoConfig.from_pretrained(folder, local_files_only=True).id2label
    labels = {int(i): _norm(n) for i, n in id2label.items()}
    known = {_norm(n): n for n in names}
    unknown = sorted(n for n in labels.values() if n not in known)
    if unknown or len(labels) != len(names):
        raise HirmError(f"{option} {folder}: its labels (config.id2label) must be the {len(names)} UnlearnCanvas "
                        f"classes; it has {len(labels)}, unknown: {', '.join(unknown[:5]) or 'none'}")
    return [known[labels[i]] for i in range(len(labels))]


def vit_from_timm_checkpoint(path: Path, names: tuple[str, ...], option: str):
    """The benchmark's timm ViT classifier as a `ViTForImageClassification` (the key mapping of transformers'
    own timm-to-ViT converter). Heads are hidden / 64, as in every timm ViT with 16-pixel patches."""
    from safetensors.torch import save_file
    from transformers import ViTConfig, ViTForImageClassification

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # whatever makes the file unreadable, the same one-line error
        raise HirmError(f"{option} {path}: not a readable torch checkpoint ({type(e).__name__})") from None
    sd = checkpoint.get("model_state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(sd, dict) or "cls_token" not in sd or "head.weight" not in sd:
        raise HirmError(f"{option} {path}: not a timm ViT classifier checkpoint (no cls_token / head.weight)")
    if sd["head.weight"].shape[0] != len(names):
        raise HirmError(f"{option} {path}: its head has {sd['head.weight'].shape[0]} classes, the benchmark's "
                        f"list has {len(names)}: is it the other domain's classifier?")
    hidden, patch = sd["cls_token"].shape[-1], sd["patch_embed.proj.weight"].shape[-1]
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    grid = round((sd["pos_embed"].shape[1] - 1) ** 0.5)
    config = ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                       intermediate_size=sd["blocks.0.mlp.fc1.weight"].shape[0], image_size=grid * patch,
                       patch_size=patch, layer_norm_eps=1e-6, qkv_bias=True,
                       id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    new = {"vit.embeddings.cls_token": sd["cls_token"], "vit.embeddings.position_embeddings": sd["pos_embed"],
           "vit.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "vit.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           "vit.layernorm.weight": sd["norm.weight"], "vit.layernorm.bias": sd["norm.bias"],
           "classifier.weight": sd["head.weight"], "classifier.bias": sd["head.bias"]}
    renames = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
               "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for i in range(layers):
        src, dst = f"blocks.{i}.", f"vit.encoder.layer.{i}."
        for old, name in renames.items():
            for kind in ("weight", "bias"):
                new[f"{dst}{name}.{kind}"] = sd[f"{src}{old}.{kind}"]
        for kind in ("weight", "bias"):  # timm keeps query, key and value in one matrix
            for part, chunk in zip(("query", "key", "value"), sd[f"{src}attn.qkv.{kind}"].chunk(3), strict=True):
                new[f"{dst}attention.attention.{part}.{kind}"] = chunk
    # the keys above are transformers' checkpoint names, which from_pretrained maps onto any version's modules
    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in new.items()}, Path(folder) / "model.safetensors")
        return ViTForImageClassification.from_pretrained(folder, local_files_only=True)


def _check_path(path: Path | None, option: str) -> Path:
    if path is None:
        raise HirmError(f"--protocol unlearncanvas needs {option} PATH: the benchmark's classifier checkpoint "
                        "(.pth) or a local transformers image-classification folder (see docs/protocols.md)")
    if not Path(path).is_file() and not (Path(path) / "config.json").is_file():
        raise HirmError(f"{option} {path}: neither a checkpoint file nor a transformers model folder (config.json)")
    return Path(path)


def accuracies(records: list[dict], concept: str | None) -> dict[str, Any]:
    """Style / object accuracy and, for a target concept, UA / IRA / CRA (means over classes, as the benchmark)."""
    def acc(domain: str, keep) -> float | None:
        per_class: dict[str, list[bool]] = {}
        for r in records:
            if keep(r):
                per_class.setdefault(r[domain], []).append(r["scores"][f"pred_{domain}"] == r[domain])
        return float(np.mean([np.mean(v) for v in per_class.values()])) if per_class else None

    out: dict[str, Any] = {"n_images": len(records), "style_acc": acc("style", lambda r: True),
                           "object_acc": acc("object", lambda r: True)}
    if concept is not None:
        domain, name = find_concept(concept)
        other = "object" if domain == "style" else "style"
        target = acc(domain, lambda r: r[domain] == name)
        out.update({
            "concept": name, "domain": domain,
            "ua": None if target is None else 1.0 - target,
            "ira": acc(domain, lambda r: r[domain] != name),
            # the benchmark's CRA: the other domain's accuracy over all its images
            "cra": acc(other, lambda r: True),
        })
    return out


@dataclass
class UnlearnCanvas(Protocol):
    name: ClassVar[str] = "unlearncanvas"
    summary: ClassVar[str] = "UA / IRA / CRA on the UnlearnCanvas grid (51 styles x 20 objects, seed 188)"
    steps: ClassVar[int] = 100
    guidance: ClassVar[float] = 7.5
    scheduler: ClassVar[str] = "pndm"
    seed: ClassVar[int] = 188

    concept: str | None = None
    style_classifier: Path | None = None
    object_classifier: Path | None = None

    def check(self) -> None:
        if self.concept is not None:
            find_concept(self.concept)
        for path, names, option in ((self.style_classifier, STYLES, "--style-classifier"),
                                    (self.object_classifier, OBJECTS, "--object-classifier")):
            if _check_path(path, option).is_dir():
                _labels(path, names, option)

    def items(self, prompts: Path | None, limit: int | None) -> list[Item]:
        if prompts is not None:
            raise HirmError("--protocol unlearncanvas builds its own prompt grid: drop --prompts")
        return grid_items(self.seed, limit)

    def load(self, device: torch.device) -> None:
        self._style = _Classifier(self.style_classifier, STYLES, "--style-classifier", device)
        self._object = _Classifier(self.object_classifier, OBJECTS, "--object-classifier", device)

    def score(self, items: list[Item], images: list) -> list[dict[str, Any]]:
        return [{"pred_style": s, "pred_object": o}
                for s, o in zip(self._style.predict(images), self._object.predict(images), strict=True)]

    def summarize(self, items: list[Item], records: list[dict]) -> dict[str, Any]:
        return accuracies(records, self.concept)
