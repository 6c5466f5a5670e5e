"""Few-shot erasing (Fuchi & Takagi, BMVC 2024): the text encoder is trained to *raise* the denoising loss on a
few images of the concept, prompted with textual-inversion templates naming it, so the concept's words stop
leading the UNet to those images; no target concept is named (the words drift to whatever the model finds
nearby). A handful of steps: the authors erase in seconds.

The images are a folder of the user's (`images`); on MiniCanvas, rendered images of the concept when none is
given. Defaults are the authors' script's (Adam, lr 1e-5, batch 2, 4 epochs over 4 images). Their script
names the update set "mlp-final-attn" (every MLP and the final layer's attention), but its freezing code sets
`require_grad` (sic), a no-op, so it actually trains every parameter; `layers="all"` is the closer match to
what their released results ran.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hirm.encoders import find_text_encoders
from hirm.erase.denoiser import concept_latents, denoising_loss, image_latents, require_unet_pipeline
from hirm.erase.loop import OptimConfig, optimise
from hirm.erase.textenc import trainable_parameter_names
from hirm.errors import HirmError
from hirm.minicanvas import registry, world
from hirm.patch import SEP, Patch, fingerprint
from hirm.registry import option
from hirm.tokens import frozen

# The textual-inversion templates the authors prompt with.
OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}", "a cool painting in the style of {}",
    "a close-up painting in the style of {}", "a bright painting in the style of {}",
    "a good painting in the style of {}", "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}",
    "a large painting in the style of {}",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class FewShotConfig:
    images: str = option("", "folder of the concept's images ('' on MiniCanvas: n_images rendered ones)")
    n_images: int = option(4, "MiniCanvas: how many of the concept's images are rendered")
    concept_type: str = option("auto", "prompt templates: object, style, or auto (the MiniCanvas world's kind, "
                                       "else object)")
    epochs: int = option(4, "passes over the images")
    batch_size: int = option(2, "images per step")
    lr: float = option(1e-5, "learning rate")
    betas: tuple[float, float] = option((0.9, 0.98), "AdamW betas")
    eps: float = option(1e-6, "AdamW eps")
    weight_decay: float = option(1e-8, "AdamW weight decay")
    layers: str = option("mlp-final-attn", "text-encoder update set (a preset or layer indices)")
    seed: int = option(42, "seed of the noise, timesteps and the optimisation")

    def validate(self) -> None:
        if min(self.n_images, self.epochs, self.batch_size) < 1:
            raise HirmError("fewshot needs n_images, epochs and batch_size >= 1")
        if not self.lr > 0:
            raise HirmError(f"--lr {self.lr}: need a positive learning rate")
        if self.concept_type not in ("auto", "object", "style"):
            raise HirmError(f"fewshot concept_type {self.concept_type!r}: use auto, object or style")


def erase_fewshot(pipe, concept: str, config: FewShotConfig, progress: bool = True) -> Patch:
    config.validate()
    require_unet_pipeline(pipe, "fewshot")

    (enc,) = find_text_encoders(pipe, which="text_encoder")
    names = trainable_parameter_names(enc, config.layers)
    latents = concept_images_latents(pipe, concept, config)
    templates = STYLE_TEMPLATES if _concept_type(concept, config) == "style" else OBJECT_TEMPLATES
    gen = torch.Generator().manual_seed(config.seed)
    per_epoch = math.ceil(len(latents) / config.batch_size)
    order: list[torch.Tensor] = []

    def loss_fn(step: int) -> torch.Tensor:
        if step % per_epoch == 0:  # a shuffled pass over the images, as the authors' DataLoader
            order[:] = torch.randperm(len(latents), generator=gen).split(config.batch_size)
        rows = order[step % per_epoch]
        picks = torch.randint(len(templates), (len(rows),), generator=gen).tolist()
        ids = enc.tokenize([templates[i].format(concept) for i in picks], truncate=True)
        return -denoising_loss(pipe, ids, latents[rows], gen)  # ascent: the concept's images stop fitting

    torch.manual_seed(config.seed)
    with frozen(pipe.unet):
        result = optimise(enc.model, names, loss_fn,
                          OptimConfig(config.epochs * per_epoch, config.lr, config.betas, config.eps,
                                      config.weight_decay),
                          desc=f"fewshot {enc.name}", progress=progress)
    return Patch(tensors={f"{enc.name}{SEP}{n}": t.contiguous() for n, t in result.tensors.items()},
                 concepts=[concept], method="fewshot", config=asdict(config),
                 fingerprints={enc.name: fingerprint(enc.model)},
                 info={enc.name: {"loss_first": result.losses[0], "loss_last": result.losses[-1],
                                  "images": len(latents)}},
                 seconds={enc.name: result.seconds})


def concept_images_latents(pipe, concept: str, config: FewShotConfig) -> torch.Tensor:
    """VAE latents of the concept's images: the `images` folder (every .png/.jpg/.jpeg, sorted, at the
    UNet's resolution), else rendered MiniCanvas images for a MiniCanvas model."""
    if not config.images:
        if not registry.is_minicanvas(pipe.text_encoder):
            raise HirmError("fewshot learns from images of the concept: pass --set images=DIR (a folder of "
                            ".png/.jpg images of it)")
        return concept_latents(pipe, concept, config.n_images, config.seed)
    from PIL import Image

    folder = Path(config.images)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise HirmError(f"fewshot images={config.images!r}: no .png/.jpg/.jpeg images there; pass a folder of "
                        "images of the concept")
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    pixels = pipe.image_processor.preprocess([Image.open(p).convert("RGB") for p in files], height=size, width=size)
    return image_latents(pipe, pixels)


def kind_preset(kind: str) -> dict:
    """Few-shot erasing's prompt templates for an object or a style (other kinds keep "auto")."""
    return {"concept_type": kind} if kind in ("object", "style") else {}


def _concept_type(concept: str, config: FewShotConfig) -> str:
    if config.concept_type != "auto":
        return config.concept_type
    return "style" if concept in world.STYLES else "object"
