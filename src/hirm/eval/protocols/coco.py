"""COCO_30k_10k locality: CLIP score of each image with its caption, and FID of the erased model's images against
the base model's images of the same prompts and seeds (the paper's protocol).

Both use torchmetrics with weights from a local path (nothing is downloaded): `clip_model` is a transformers
CLIP folder (e.g. openai/clip-vit-base-patch32 saved with `save_pretrained`, the paper's choice); `fid_model` is
a CLIP folder (FID on CLIP image features) or torch-fidelity's Inception weights file (the classic FID; needs
`pip install torch-fidelity`). CLIP score is reported as the cosine (torchmetrics' value / 100), like the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from hirm.errors import HirmError
from hirm.eval.protocols.base import Protocol
from hirm.eval.protocols.prompts import Item, read_prompt_csv
from hirm.eval.protocols.runner import image_path


def _require_clip_folder(path: Path | None, option: str) -> Path:
    if path is None:
        raise HirmError(f"--protocol coco needs {option} PATH: a local CLIP model folder (e.g. "
                        "openai/clip-vit-base-patch32 saved with save_pretrained); nothing is downloaded")
    if not (Path(path) / "config.json").is_file():
        raise HirmError(f"{option} {path}: not a transformers model folder (no config.json)")
    return Path(path)


def _to_tensor(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2)


def _tensor(features) -> torch.Tensor:
    # transformers 5 returns a model output from get_*_features, transformers 4 (and torchmetrics 1.x) a tensor
    return getattr(features, "pooler_output", features)


def _clip_with_tensor_features(folder: Path):
    from transformers import CLIPModel

    class ClipWithTensorFeatures(CLIPModel):
        def get_image_features(self, *args, **kwargs) -> torch.Tensor:
            return _tensor(super().get_image_features(*args, **kwargs))

        def get_text_features(self, *args, **kwargs) -> torch.Tensor:
            return _tensor(super().get_text_features(*args, **kwargs))

    return ClipWithTensorFeatures.from_pretrained(folder, local_files_only=True).eval()


class ClipImageFeatures(torch.nn.Module):
    """CLIP image embeddings of uint8 images, as a torchmetrics FID feature extractor."""

    def __init__(self, folder: Path):
        super().__init__()
        from transformers import CLIPImageProcessor

        self.model = _clip_with_tensor_features(folder)
        self.processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.processor(images=list(images.cpu()), return_tensors="pt")["pixel_values"]
        return self.model.get_image_features(pixel_values=pixels.to(self.model.device)).double()


@dataclass
class Coco(Protocol):
    name: ClassVar[str] = "coco"
    summary: ClassVar[str] = "CLIP score and FID (erased vs base) on COCO captions (COCO_30k_10k)"
    steps: ClassVar[int] = 50
    guidance: ClassVar[float] = 7.5
    scheduler: ClassVar[str] = "ddim"
    seed: ClassVar[int] = 0

    clip_model: Path | None = None
    fid_model: Path | None = None
    prompt_column: str | None = None

    def check(self) -> None:
        _require_clip_folder(self.clip_model, "--clip-model")
        if self.fid_model is not None and not Path(self.fid_model).exists():
            raise HirmError(f"--fid-model {self.fid_model}: no such file or folder; pass a CLIP folder or "
                            "torch-fidelity's Inception weights file")

    def items(self, prompts: Path | None, limit: int | None) -> list[Item]:
        if prompts is None:
            raise HirmError("--protocol coco needs --prompts FILE.csv (COCO_30k_10k: case_number, prompt, "
                            "evaluation_seed); see docs/protocols.md")
        return read_prompt_csv(prompts, self.seed, self.prompt_column, limit, use_guidance_column=False)

    def load(self, device: torch.device) -> None:
        from torchmetrics.multimodal.clip_score import CLIPScore
        from transformers import CLIPProcessor

        folder = _require_clip_folder(self.clip_model, "--clip-model")
        def model_and_processor():
            return _clip_with_tensor_features(folder), CLIPProcessor.from_pretrained(folder, local_files_only=True)

        self._clip = CLIPScore(model_name_or_path=model_and_processor).to(device)

    @torch.no_grad()
    def score(self, items: list[Item], images: list) -> list[dict[str, Any]]:
        pixels = _to_tensor(images).to(self._clip.device)
        # torchmetrics' CLIPScore averages over what it is given: one image at a time keeps each image's score
        return [{"clip_score": float(self._clip(pixels[i : i + 1], [it.prompt])) / 100.0}
                for i, it in enumerate(items)]

    def summarize(self, items: list[Item], records: list[dict]) -> dict[str, Any]:
        scores = [r["scores"]["clip_score"] for r in records]
        return {"clip_score": float(np.mean(scores)), "n_images": len(records)}

    def compare(self, run_dir: Path, items: list[Item], variants: list[str]) -> dict[str, Any]:
        if "erased" not in variants:
            return {"fid": None, "fid_note": "FID compares erased against base images: pass --patch"}
        if self.fid_model is None:
            return {"fid": None, "fid_note": "no --fid-model given"}
        if len(items) < 2:
            return {"fid": None, "fid_note": "FID needs at least 2 images per variant"}
        from torchmetrics.image.fid import FrechetInceptionDistance

        if Path(self.fid_model).is_dir():
            fid = FrechetInceptionDistance(feature=ClipImageFeatures(self.fid_model), reset_real_features=True)
            features = "clip"
        else:
            try:
                fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(self.fid_model))
            except ModuleNotFoundError:
                raise HirmError("--fid-model FILE (Inception weights) needs torch-fidelity: pip install "
                                "torch-fidelity, or pass a CLIP folder for FID on CLIP features") from None
            features = "inception"
        for variant, real in (("base", True), ("erased", False)):
            for i in range(0, len(items), 32):
                batch = [Image.open(image_path(run_dir, variant, it.key)) for it in items[i : i + 32]]
                fid.update(_to_tensor(batch), real=real)
        return {"fid": float(fid.compute()), "fid_features": features}
