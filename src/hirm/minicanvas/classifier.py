"""The MiniCanvas judge: a small CNN with one head per labelled attribute.

It plays the role of UnlearnCanvas' ViT classifiers (object and style heads) and its trunk is the frozen
image tower against which the text encoder is trained (LiT). Colour, background and size heads make the
trunk carry those attributes too, so that caption words for them mean something to the text encoder.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from hirm.minicanvas import world

HEADS: dict[str, int] = {
    "object": len(world.OBJECTS),
    "style": len(world.STYLES),
    "colour": len(world.COLOURS),
    "background": len(world.BACKGROUNDS),
    "size": len(world.SIZES),
}


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class MiniCanvasClassifier(ModelMixin, ConfigMixin):
    """Images in [-1, 1] (N x 3 x 32 x 32) -> logits per head."""

    @register_to_config
    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), feature_dim: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            layers.append(_block(cin, w))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.trunk = nn.Sequential(*layers)
        # 8x8 maps -> spatially pooled features (avg + max keeps both texture statistics and peak evidence)
        self.project = nn.Sequential(nn.Linear(2 * cin, feature_dim), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, n) for name, n in HEADS.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        h = self.trunk(images)
        return self.project(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        return {name: head(f) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Predicted class index per head for images in [-1, 1]."""
        out: dict[str, list[torch.Tensor]] = {name: [] for name in HEADS}
        for chunk in images.split(batch_size):
            for name, logits in self(chunk.to(self.device, self.dtype)).items():
                out[name].append(logits.argmax(-1).cpu())
        return {name: torch.cat(v) for name, v in out.items()}


def to_tensor(images_uint8) -> torch.Tensor:
    """uint8 N x H x W x 3 (numpy) -> float N x 3 x H x W in [-1, 1]."""
    t = torch.as_tensor(images_uint8).permute(0, 3, 1, 2).float()
    return t / 127.5 - 1.0


@torch.no_grad()
def classify_images(classifier: MiniCanvasClassifier, images: list) -> dict[str, np.ndarray]:
    """The judge's labels ("object", "style": index arrays) of PIL images."""
    batch = to_tensor(np.stack([np.asarray(im.convert("RGB")) for im in images]))
    return {k: v.numpy() for k, v in classifier.predict(batch).items()}
