"""Where the shipped MiniCanvas models live, and how to load them by name ("minicanvas", ...)."""

from __future__ import annotations

from pathlib import Path

import torch

from hirm.compat import diffusers_dtype
from hirm.errors import HirmError
from hirm.minicanvas.classifier import MiniCanvasClassifier

WEIGHTS = Path(__file__).parent / "weights"
FOLDERS = {"minicanvas": WEIGHTS / "minicanvas-sd", "minicanvas-flux": WEIGHTS / "minicanvas-flux"}
NAMES = tuple(FOLDERS)
CLASSIFIER = WEIGHTS / "classifier"
TOKENIZER = WEIGHTS / "minicanvas-sd" / "tokenizer"  # the CLIP BPE tokenizer, shared by every MiniCanvas model
# the sampler settings of every MiniCanvas model (the pipelines' own defaults, 50 steps / CFG 7.5, are SD's at
# 512 px); mini-Flux: true classifier-free guidance against the empty prompt, Euler on the flow-matching ODE
SAMPLING: dict[str, float] = {"steps": 25, "guidance": 5.0}
# the config field every MiniCanvas text encoder declares its family in, and its value
FAMILY_KEY, FAMILY = "hirm_family", "minicanvas"


def path(name: str) -> Path:
    folder = FOLDERS[name]
    if not (folder / "model_index.json").exists():
        raise HirmError(f"the {name} weights are not in this install ({folder}): build them with "
                        "`hirm minicanvas train`")
    return folder


def require_minicanvas(model: str) -> None:
    """A HirmError unless `model` names a shipped MiniCanvas model (the only ones with a judge)."""
    if model not in NAMES:
        raise HirmError(f"`hirm eval` scores MiniCanvas models ({', '.join(NAMES)}), which ship a judge "
                        f"classifier; {model!r} is not one")


def load_pipeline(name: str, dtype: torch.dtype = torch.float32):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(path(name), **diffusers_dtype(dtype), local_files_only=True)


def load_classifier():
    if not (CLASSIFIER / "config.json").exists():
        raise HirmError(f"the MiniCanvas classifier is not in this install ({CLASSIFIER})")
    return MiniCanvasClassifier.from_pretrained(CLASSIFIER).eval()


def family(model: torch.nn.Module) -> str | None:
    """The model family a text encoder declares in its own config (`hirm_family`, written when MiniCanvas builds
    it and kept by `save_pretrained`), or None: a copied or re-saved MiniCanvas encoder is still MiniCanvas, and
    no weights are guessed from where they were loaded or what they hash to."""
    return getattr(getattr(model, "config", None), FAMILY_KEY, None)


def is_minicanvas(model: torch.nn.Module) -> bool:
    """Does this text encoder declare itself a MiniCanvas one (hirm's MiniCanvas recipe, retain set, judge)?"""
    return family(model) == FAMILY
