"""UnlearnCanvas: "A {object} image in {style} style." for 51 styles x 20 objects at seed 188 on an
UnlearnCanvas-finetuned pipeline, judged by the benchmark's style and object classifiers.

UA = share of the target concept's images NOT classified as it; IRA = accuracy on the other classes of the
target's domain; CRA = accuracy of the other domain's classifier (objects for a style target, styles for an
object target). The classifiers are `transformers` image-classification folders (e.g. the benchmark's ViT-L/16
converted to `ViTForImageClassification` and saved with `save_pretrained`) whose `id2label` names the classes.
"""

from __future__ import annotations

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

    def __init__(self, folder: Path, names: tuple[str, ...], option: str, device: torch.device):
        from transformers import AutoModelForImageClassification

        self.labels = _labels(folder, names, option)
        self.model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True).to(device).eval()
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


def _check_folder(path: Path | None, option: str) -> Path:
    if path is None:
        raise HirmError(f"--protocol unlearncanvas needs {option} PATH: the benchmark's classifier as a local "
                        "transformers image-classification folder (see docs/protocols.md)")
    if not (Path(path) / "config.json").is_file():
        raise HirmError(f"{option} {path}: not a transformers model folder (no config.json)")
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
        _labels(_check_folder(self.style_classifier, "--style-classifier"), STYLES, "--style-classifier")
        _labels(_check_folder(self.object_classifier, "--object-classifier"), OBJECTS, "--object-classifier")

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
