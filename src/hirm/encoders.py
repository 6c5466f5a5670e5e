"""Finding and loading the text encoders of a pipeline (SD 1.x/2.x, SDXL, SD3, Flux) or a bare encoder.

HiRM edits CLIP text encoders. A pipeline may hold one (SD, Flux: `text_encoder`) or two (SDXL, SD3:
`text_encoder` and `text_encoder_2`); its T5 encoder (`text_encoder_3` in SD3, `text_encoder_2` in Flux) is
left alone unless asked for by name or with "all" (HiRM's recipe applies to it unchanged). Loading never
downloads: a hub id must already be in the local cache.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5EncoderModel,
    T5TokenizerFast,
)

from hirm.errors import HirmError

CLIP_CLASSES = (CLIPTextModel, CLIPTextModelWithProjection)
CLIP_CLASS_NAMES = {"CLIPTextModel", "CLIPTextModelWithProjection"}
ENCODER_CLASSES = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection,
                   "T5EncoderModel": T5EncoderModel}
# pipeline component name of each text encoder -> its tokenizer's component name
TOKENIZER_OF = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2", "text_encoder_3": "tokenizer_3"}
BARE = "text_encoder"  # component name used for an encoder loaded on its own
T5_MAX_LENGTH = 512  # the longest T5 sequence Flux and SD3 pipelines use


@dataclass
class TextEncoder:
    """One text encoder (CLIP, or T5 where asked for) with its tokenizer and its name in the pipeline."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    @property
    def is_clip(self) -> bool:
        return is_clip_text_encoder(self.model)

    @property
    def layers(self) -> torch.nn.ModuleList:
        return transformer_layers(self.model)

    @property
    def hidden_size(self) -> int:
        return int(getattr(self.model.config, "hidden_size", None) or self.model.config.d_model)

    @property
    def max_length(self) -> int:
        limit = getattr(self.model.config, "max_position_embeddings", T5_MAX_LENGTH)  # T5: relative positions
        return int(min(self.tokenizer.model_max_length, limit))

    def tokenize(self, prompts: list[str], truncate: bool = False) -> torch.Tensor:
        """Token ids padded to the encoder's full length (as pipelines do). Over-long prompts are an error
        unless `truncate`."""
        if not truncate:
            for p in prompts:
                n = len(self.tokenizer(p)["input_ids"])
                if n > self.max_length:
                    raise HirmError(
                        f"prompt {p[:40]!r}... is {n} tokens, longer than the encoder's {self.max_length}: "
                        "shorten it, or pass --truncate to cut it"
                    )
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")["input_ids"]
        return ids.to(self.model.device)


def transformer_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The encoder's transformer blocks (CLIP: transformers 5 dropped the `.text_model` wrapper; T5: blocks)."""
    if isinstance(model, T5EncoderModel):
        return model.encoder.block
    return getattr(model, "text_model", model).encoder.layers


def is_clip_text_encoder(obj: object) -> bool:
    return isinstance(obj, CLIP_CLASSES)


def is_text_encoder(obj: object) -> bool:
    return isinstance(obj, (*CLIP_CLASSES, T5EncoderModel))


def find_text_encoders(target: object, which: str | list[str] | None = None) -> list[TextEncoder]:
    """The text encoders of a diffusers pipeline, a bare encoder, or a `TextEncoder` list.

    `which`: None or "clip" for every CLIP encoder (what HiRM edits by default); "all" for every text encoder,
    T5 included; or component names ("text_encoder", "text_encoder_2", ...).
    """
    if isinstance(target, list) and all(isinstance(t, TextEncoder) for t in target):
        found = list(target)
    elif isinstance(target, TextEncoder):
        found = [target]
    elif is_text_encoder(target):
        raise HirmError("a bare text encoder needs its tokenizer: pass TextEncoder(name, model, tokenizer)")
    else:
        components = getattr(target, "components", None)
        if not isinstance(components, dict):
            raise HirmError(f"{type(target).__name__} is neither a diffusers pipeline nor a text encoder")
        found = [TextEncoder(name, components[name], components.get(tok_name))
                 for name, tok_name in TOKENIZER_OF.items() if is_text_encoder(components.get(name))]
    return _select(found, which, source=type(target).__name__)


def _select(found: list[TextEncoder], which: str | list[str] | None, source: str) -> list[TextEncoder]:
    if which is None or which == "clip":
        found = [e for e in found if e.is_clip]
        if not found:
            raise HirmError(f"{source} has no CLIP text encoder: HiRM edits CLIP text encoders (name a T5 "
                            "encoder, or pass --encoder all, to edit T5)")
        return found
    if not found:
        raise HirmError(f"{source} has no text encoder")
    if which == "all":
        return found
    names = [which] if isinstance(which, str) else list(which)
    by_name = {e.name: e for e in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise HirmError(f"no text encoder named {missing[0]!r}; this model has: {', '.join(by_name)} "
                        "(or use clip / all)")
    return [by_name[n] for n in names]


# ---------------------------------------------------------------------------------------------- loading


def resolve_model_path(model: str) -> Path:
    """A local folder as given, a MiniCanvas name, or a hub id found in the local cache (never downloaded)."""
    from hirm.minicanvas import registry

    if model in registry.NAMES:
        return registry.path(model)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise HirmError(f"--model {model}: expected a folder (diffusers pipeline or text encoder), got a file")
        return path
    if model.count("/") == 1 and not model.startswith((".", "/")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(model, local_files_only=True))
        except Exception:
            pass
    raise HirmError(
        f"model {model!r} is not a local folder and not in the local Hugging Face cache; hirm never downloads "
        "weights: pass a local diffusers folder or text-encoder folder, or 'minicanvas'"
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise HirmError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise HirmError(f"{path} is not a JSON object: the model folder is damaged")
    return data


@contextmanager
def _loading(root: Path):
    """Any failure of the libraries' loaders as one line: a model folder is input (docs/security.md); a pickle
    weights file that torch's safe loader refuses, a truncated safetensors file or a broken config all end here."""
    try:
        yield
    except HirmError:
        raise
    except Exception as e:  # the loaders raise OSError, ValueError, UnpicklingError, RuntimeError, ...
        first = (str(e).strip().splitlines() or [""])[0][:200]
        hint = (": hirm loads pickle weights only through torch's safe loader; convert them to safetensors"
                if "pickl" in f"{type(e).__name__} {e}".lower() or "weights_only" in str(e) else "")
        raise HirmError(f"cannot load the model in {root} ({type(e).__name__}: {first}){hint}") from e


def load_text_encoders(model: str | Path, which: str | list[str] | None = None,
                       dtype: torch.dtype = torch.float32) -> list[TextEncoder]:
    """Load only the text encoders (and tokenizers) of a pipeline folder, or a bare CLIP encoder folder;
    `which` as in `find_text_encoders`.

    Cheaper than loading the whole pipeline when all that is needed is to erase.
    """
    root = resolve_model_path(str(model))
    index = root / "model_index.json"
    if index.exists():
        spec = _read_json(index)
        classes = {name: spec[name][1] for name in TOKENIZER_OF
                   if isinstance(spec.get(name), list) and len(spec[name]) == 2
                   and isinstance(spec[name][1], str) and spec[name][1] in ENCODER_CLASSES}
        if which in (None, "clip"):
            wanted = [n for n, c in classes.items() if c in CLIP_CLASS_NAMES]
        else:
            wanted = list(classes) if which == "all" else [which] if isinstance(which, str) else list(which)
        found = []
        for name in (n for n in wanted if n in classes):  # only what is asked for: a T5-XXL is ~9 GB
            with _loading(root):
                enc = ENCODER_CLASSES[classes[name]].from_pretrained(root, subfolder=name, torch_dtype=dtype,
                                                                     local_files_only=True)
                tok_cls = CLIPTokenizer if classes[name] in CLIP_CLASS_NAMES else T5TokenizerFast
                tok = tok_cls.from_pretrained(root, subfolder=TOKENIZER_OF[name], local_files_only=True)
            found.append(TextEncoder(name, enc.eval(), tok))
        missing = [n for n in wanted if n not in classes]
        if missing:
            raise HirmError(f"no text encoder named {missing[0]!r}; this model has: {', '.join(classes)} "
                            "(or use clip / all)")
        return _select(found, which, source=str(root))
    config = root / "config.json"
    if config.exists():
        archs = _read_json(config).get("architectures")
        arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else ""
        if arch not in CLIP_CLASS_NAMES:
            raise HirmError(f"{root} holds a {arch or 'non-CLIP'} model, not a CLIP text encoder")
        with _loading(root):
            enc = ENCODER_CLASSES[arch].from_pretrained(root, torch_dtype=dtype, local_files_only=True)
        tok_dir = next((d for d in (root, root / "tokenizer", root.parent / "tokenizer")
                        if (d / "tokenizer_config.json").exists()), None)
        if tok_dir is None:
            raise HirmError(f"no tokenizer found beside the text encoder in {root} "
                            "(looked in ., tokenizer/, ../tokenizer/)")
        with _loading(root):
            tok = CLIPTokenizer.from_pretrained(tok_dir)
        return _select([TextEncoder(BARE, enc.eval(), tok)], which, str(root))
    raise HirmError(f"{root} is neither a diffusers pipeline (model_index.json) nor a text encoder (config.json)")


def load_pipeline(model: str | Path, dtype: torch.dtype = torch.float32):
    """The whole diffusers pipeline from a local folder, MiniCanvas name, or cached hub id."""
    from diffusers import DiffusionPipeline

    from hirm.minicanvas import registry

    if str(model) in registry.NAMES:
        return registry.load_pipeline(str(model), dtype=dtype)
    root = resolve_model_path(str(model))
    if not (root / "model_index.json").exists():
        raise HirmError(f"{root} is not a diffusers pipeline folder (no model_index.json)")
    with _loading(root):
        return DiffusionPipeline.from_pretrained(root, torch_dtype=dtype, local_files_only=True)
