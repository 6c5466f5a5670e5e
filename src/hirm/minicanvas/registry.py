"""Where the shipped MiniCanvas models live, and how to load them by name ("minicanvas", ...)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from hirm.errors import HirmError

WEIGHTS = Path(__file__).parent / "weights"
FOLDERS = {"minicanvas": WEIGHTS / "minicanvas-sd", "minicanvas-flux": WEIGHTS / "minicanvas-flux"}
NAMES = tuple(FOLDERS)
CLASSIFIER = WEIGHTS / "classifier"
TOKENIZER = WEIGHTS / "minicanvas-sd" / "tokenizer"  # the CLIP BPE tokenizer, shared by every MiniCanvas model
# sampler settings per MiniCanvas model (the pipelines' own defaults, 50 steps / CFG 7.5, are SD's at 512 px)
# (mini-Flux: true classifier-free guidance against the empty prompt, Euler on the flow-matching ODE)
SAMPLING: dict[str, dict[str, float]] = {"minicanvas": {"steps": 25, "guidance": 5.0},
                                         "minicanvas-flux": {"steps": 25, "guidance": 5.0}}


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

    return DiffusionPipeline.from_pretrained(path(name), torch_dtype=dtype, local_files_only=True)


def load_classifier():
    from hirm.minicanvas.classifier import MiniCanvasClassifier

    if not (CLASSIFIER / "config.json").exists():
        raise HirmError(f"the MiniCanvas classifier is not in this install ({CLASSIFIER})")
    return MiniCanvasClassifier.from_pretrained(CLASSIFIER).eval()


def is_minicanvas(model: torch.nn.Module) -> bool:
    """Is this one of the shipped MiniCanvas text encoders: loaded from the shipped weights, or the same weights
    saved elsewhere (a pipeline assembled from MiniCanvas parts under runs/)?"""
    source = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    try:
        if Path(source).resolve().is_relative_to(WEIGHTS.resolve()):
            return True
    except (OSError, ValueError):
        pass
    shipped = _shipped_encoders()
    shape = _shape(model)
    if not any(shape == s for s, _ in shipped):  # cheap: only a same-shaped model is hashed
        return False
    from hirm.patch import fingerprint

    return fingerprint(model) in {f for _, f in shipped}


def _shape(model: torch.nn.Module) -> tuple:
    return tuple((n, tuple(t.shape)) for n, t in sorted(model.state_dict().items()))


@functools.cache
def _shipped_encoders() -> tuple[tuple[tuple, str], ...]:
    """(parameter shapes, fingerprint) of every shipped text encoder."""
    import transformers

    from hirm.patch import fingerprint

    out = {}
    for folder in FOLDERS.values():
        for sub in ("text_encoder", "text_encoder_2"):
            where = (folder / sub).resolve()
            if (where / "config.json").exists() and where not in out:
                config = transformers.AutoConfig.from_pretrained(where, local_files_only=True)
                model = getattr(transformers, config.architectures[0]).from_pretrained(where, local_files_only=True)
                out[where] = (_shape(model), fingerprint(model))
    return tuple(out.values())
