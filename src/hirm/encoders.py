"""Finding and loading the text encoders of a pipeline (SD 1.x/2.x, SDXL, SD3, Flux) or a bare encoder.

HiRM edits CLIP text encoders. A pipeline may hold one (SD, Flux: `text_encoder`) or two (SDXL, SD3:
`text_encoder` and `text_encoder_2`); its T5 encoder (`text_encoder_3` in SD3, `text_encoder_2` in Flux) is
left alone unless asked for by name or with "all" (HiRM's recipe applies to it unchanged). Loading never
downloads: a hub id must already be in the local cache.

Device and precision (`device=` / `dtype=` of the loaders, `--device` / `--dtype` of the CLI): "auto" picks CUDA,
then Apple's MPS, then the CPU, and float16 on a GPU (bfloat16 for Flux, whose transformer overflows in float16),
float32 on the CPU and for the MiniCanvas models. A folder's fp16 variant files (`model.fp16.safetensors`, what
`save_pretrained(variant="fp16")` writes) are read when loading in float16, or when they are all it has.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

from hirm.compat import diffusers_dtype
from hirm.errors import HirmError
from hirm.minicanvas import registry

CLIP_CLASSES = (CLIPTextModel, CLIPTextModelWithProjection)
CLIP_CLASS_NAMES = {"CLIPTextModel", "CLIPTextModelWithProjection"}
ENCODER_CLASSES = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection,
                   "T5EncoderModel": T5EncoderModel}
# pipeline component name of each text encoder -> its tokenizer's component name
TOKENIZER_OF = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2", "text_encoder_3": "tokenizer_3"}
BARE = "text_encoder"  # component name used for an encoder loaded on its own
T5_MAX_LENGTH = 512  # the longest T5 sequence Flux and SD3 pipelines use
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
DTYPE_CHOICES = "auto, float32, float16, bfloat16"
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"


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
                        "shorten it, or cut it (hirm erase --set truncate=true)"
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


# ---------------------------------------------------------------------------------------- device, dtype


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device for "auto" / None (CUDA, then MPS, then the CPU) or a name ("cpu", "cuda", "cuda:1",
    "mps"). A device this machine does not have is a HirmError, before anything is loaded."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError):
        raise HirmError(f"--device {device!r}: use one of {DEVICE_CHOICES}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (f"this torch ({torch.__version__}) is a CPU-only build" if torch.version.cuda is None
                   else "torch finds no CUDA GPU or driver")
            raise HirmError(f"--device {device}: no CUDA GPU here ({why}); use --device cpu, or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise HirmError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                            f"numbered from 0")
    elif dev.type == "mps":
        if not _mps_available():
            raise HirmError(f"--device {device}: MPS (Apple silicon) is not available here; use --device cpu, or auto")
    elif dev.type != "cpu":
        raise HirmError(f"--device {device}: hirm runs on {DEVICE_CHOICES}")
    return dev


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A torch dtype from a name ("float16", "bf16", ...), None for "auto" / None."""
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        return None
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise HirmError(f"dtype {dtype}: use one of {DTYPE_CHOICES}")
        return dtype
    found = DTYPES.get(str(dtype).strip().lower().removeprefix("torch."))
    if found is None:
        raise HirmError(f"--dtype {dtype!r}: use one of {DTYPE_CHOICES}")
    return found


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def is_flux(model: str | Path) -> bool:
    """Is `model` (a folder, MiniCanvas name or cached id) a Flux pipeline (from its model_index.json)?"""
    try:
        root = resolve_model_path(str(model))
        spec = json.loads((root / "model_index.json").read_text())
    except (HirmError, OSError, ValueError, RecursionError):
        return False
    return isinstance(spec, dict) and "Flux" in str(spec.get("_class_name", ""))


def pipeline_components(model: str | Path) -> list[str]:
    """The components a pipeline folder (MiniCanvas name or cached id) declares in its model_index.json; [] for a
    text-encoder folder."""
    root = resolve_model_path(str(model))
    index = root / "model_index.json"
    if not index.exists():
        return []
    spec = _read_json(index)
    return [k for k, v in spec.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2
            and v[1] is not None]


def is_path(model: Any) -> bool:
    """Whether `model` names a model (a path, MiniCanvas name or hub id) rather than being a loaded one."""
    return isinstance(model, str | bytes) or hasattr(model, "__fspath__")


def model_components(model: Any) -> list[str]:
    """The component names of `model`: a path's declared pipeline components, a loaded pipeline's, or the names
    of a `TextEncoder` list."""
    if is_path(model):
        return pipeline_components(model.decode() if isinstance(model, bytes) else model)
    if isinstance(model, list):
        return [e.name for e in model]
    return [n for n, m in getattr(model, "components", {}).items() if m is not None]


def declared_family(model: str | Path) -> str | None:
    """The family a model's CLIP text encoder declares in its config.json (`registry.family`, read from the
    folder of a pipeline, MiniCanvas name or cached id, or of a text encoder alone), or None."""
    try:
        root = resolve_model_path(str(model))
        config = root / "text_encoder" / "config.json"
        spec = json.loads((config if config.exists() else root / "config.json").read_text())
    except (HirmError, OSError, ValueError, RecursionError):
        return None
    return spec.get(registry.FAMILY_KEY) if isinstance(spec, dict) else None


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | str, model: str | Path | None = None
                  ) -> torch.dtype:
    """`dtype`, or for "auto" / None: float32 on the CPU and for the MiniCanvas models (small, and their
    documented figures are fp32); on a GPU float16, or bfloat16 for Flux (its transformer overflows in
    float16)."""
    chosen = parse_dtype(dtype)
    if chosen is not None:
        return chosen
    if torch.device(device).type == "cpu" or (model is not None and declared_family(model) == registry.FAMILY):
        return torch.float32
    return torch.bfloat16 if model is not None and is_flux(model) else torch.float16


def _weight_files(folder: Path) -> tuple[bool, bool]:
    """(has plain weight files, has fp16 variant files) in one component folder."""
    plain = fp16 = False
    if folder.is_dir():
        for f in folder.iterdir():
            if not f.name.endswith((".safetensors", ".bin")):
                continue
            parts = f.name.split(".")
            if any(p == "fp16" or p.startswith("fp16-") for p in parts[1:-1]):
                fp16 = True
            else:
                plain = True
    return plain, fp16


def choose_variant(folders: list[Path], dtype: torch.dtype) -> str | None:
    """"fp16" to read the fp16 variant files of these component folders, or None for the plain ones: the variant
    when loading in float16 (half the bytes, the same values), or when some folder has only the variant. Other
    precisions read the plain files: bfloat16 rounded from the fp32 originals is what a patch's bfloat16
    fingerprint records, and float32 training wants the originals."""
    found = [_weight_files(f) for f in folders]
    if not any(fp16 for _, fp16 in found):
        return None
    if dtype == torch.float16 or any(fp16 and not plain for plain, fp16 in found):
        return "fp16"
    return None


def stored_dtype(model: str | Path) -> torch.dtype:
    """The precision the text encoder's weights are stored in (the first tensor of its plain weight files, or of
    its fp16 variant files when it has only those); float32 when it cannot tell. `hirm apply --dtype auto` keeps
    it."""
    from safetensors import safe_open

    root = resolve_model_path(str(model))
    folder = root / "text_encoder" if (root / "model_index.json").exists() else root
    files = sorted(folder.glob("*.safetensors"), key=lambda f: ".fp16" in f.name)  # plain files first
    for f in files:
        try:
            with safe_open(str(f), "pt") as st:
                key = next(iter(st.keys()), None)
                if key is not None:
                    kind = st.get_slice(key).get_dtype()
                    return {"F16": torch.float16, "BF16": torch.bfloat16}.get(kind, torch.float32)
        except Exception:  # a damaged file: the loader reports it
            break
    return torch.float32


def _place(model, device: torch.device | None):
    return model if device is None else model.to(device)


# ---------------------------------------------------------------------------------------------- loading


def resolve_model_path(model: str) -> Path:
    """A local folder as given, a MiniCanvas name, or a hub id found in the local cache (never downloaded)."""
    if model in registry.NAMES:
        return registry.path(model)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise HirmError(f"--model {model}: expected a folder (diffusers pipeline or text encoder), got a file")
        return path
    if model.count("/") == 1 and not model.startswith((".", "/")):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

        try:
            return Path(snapshot_download(model, local_files_only=True))
        except (LocalEntryNotFoundError, HFValidationError):  # not cached, or not a hub id: the error below
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
                       dtype: str | torch.dtype | None = torch.float32,
                       device: str | torch.device | None = None) -> list[TextEncoder]:
    """Load only the text encoders (and tokenizers) of a pipeline folder, or a bare CLIP encoder folder;
    `which` as in `find_text_encoders`; `dtype` ("auto" as in `resolve_dtype`) and `device` (None: the CPU;
    "auto" as in `resolve_device`) as named.

    Cheaper than loading the whole pipeline when all that is needed is to erase.
    """
    device = None if device is None else resolve_device(device)
    dtype = resolve_dtype(dtype, device or "cpu", model)
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
                enc = ENCODER_CLASSES[classes[name]].from_pretrained(
                    root, subfolder=name, torch_dtype=dtype, variant=choose_variant([root / name], dtype),
                    local_files_only=True)
                tok_cls = CLIPTokenizer if classes[name] in CLIP_CLASS_NAMES else T5TokenizerFast
                tok = tok_cls.from_pretrained(root, subfolder=TOKENIZER_OF[name], local_files_only=True)
            found.append(TextEncoder(name, _place(enc.eval(), device), tok))
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
            enc = ENCODER_CLASSES[arch].from_pretrained(root, torch_dtype=dtype, variant=choose_variant([root], dtype),
                                                        local_files_only=True)
        tok_dir = next((d for d in (root, root / "tokenizer", root.parent / "tokenizer")
                        if (d / "tokenizer_config.json").exists()), None)
        if tok_dir is None:
            raise HirmError(f"no tokenizer found beside the text encoder in {root} "
                            "(looked in ., tokenizer/, ../tokenizer/)")
        with _loading(root):
            tok = CLIPTokenizer.from_pretrained(tok_dir)
        return _select([TextEncoder(BARE, _place(enc.eval(), device), tok)], which, str(root))
    raise HirmError(f"{root} is neither a diffusers pipeline (model_index.json) nor a text encoder (config.json)")


def load_pipeline(model: str | Path, dtype: str | torch.dtype | None = torch.float32,
                  device: str | torch.device | None = None):
    """The whole diffusers pipeline from a local folder, MiniCanvas name, or cached hub id, in `dtype` ("auto" as
    in `resolve_dtype`) on `device` (None: the CPU; "auto" as in `resolve_device`). The fp16 variant files are
    read as `choose_variant` says."""
    from diffusers import DiffusionPipeline

    device = None if device is None else resolve_device(device)
    dtype = resolve_dtype(dtype, device or "cpu", model)
    root = resolve_model_path(str(model))
    if not (root / "model_index.json").exists():
        raise HirmError(f"{root} is not a diffusers pipeline folder (no model_index.json)")
    spec = _read_json(root / "model_index.json")
    folders = [root / name for name, value in spec.items() if not name.startswith("_") and isinstance(value, list)]
    with _loading(root):
        pipe = DiffusionPipeline.from_pretrained(root, **diffusers_dtype(dtype), variant=choose_variant(folders, dtype),
                                                 local_files_only=True)
    return _place(pipe, device)


def trainable_copies(encoders: list[TextEncoder], device: str | torch.device | None = None) -> list[TextEncoder]:
    """The encoders as erasure trains them: float32 (fp32 master weights; a CLIP text encoder is small) on
    `device` (None: where each one is). An encoder already in float32 on that device is used as it is; others are
    copied (the caller's model is never converted). Fingerprints match: they hash weights in float16, and a
    float16 or bfloat16 weight converts to float32 exactly."""
    import copy

    device = None if device is None else resolve_device(device)
    out: list[TextEncoder] = []
    for enc in encoders:
        param = next(enc.model.parameters())
        if param.dtype == torch.float32 and (device is None or param.device == device):
            out.append(enc)
            continue
        if param.device.type == "meta":
            raise HirmError(f"{enc.name} is offloaded (its weights are not in memory, as after "
                            "enable_sequential_cpu_offload): erase before offloading, or pass the model's folder")
        # without accelerate's offloading hooks (enable_model_cpu_offload): they refer to the pipeline's other
        # models, which must not be copied
        hooks = {id(m._hf_hook): None for m in enc.model.modules() if hasattr(m, "_hf_hook")}
        model = copy.deepcopy(enc.model, memo=dict(hooks))
        for m in model.modules():
            for attr in ("forward", "_old_forward", "_hf_hook") if hooks else ():
                m.__dict__.pop(attr, None)
        out.append(TextEncoder(enc.name, model.to(device=device or param.device, dtype=torch.float32).eval(),
                               enc.tokenizer))
    return out
