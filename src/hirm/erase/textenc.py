"""What every text-encoder erasure shares: choosing trainable tensors and reading a layer's output."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hirm.encoders import TextEncoder, transformer_layers
from hirm.errors import HirmError

ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
MLP = ("mlp.fc1", "mlp.fc2")
# T5 blocks name the same parts differently; configs use CLIP's names, translated here (the MLP is gated in
# Flux's T5 v1.1: wi_0 / wi_1)
T5_NAMES = {
    "self_attn.q_proj": ("layer.0.SelfAttention.q",), "self_attn.k_proj": ("layer.0.SelfAttention.k",),
    "self_attn.v_proj": ("layer.0.SelfAttention.v",), "self_attn.out_proj": ("layer.0.SelfAttention.o",),
    "self_attn": ("layer.0.SelfAttention",),
    "mlp.fc1": ("layer.1.DenseReluDense.wi", "layer.1.DenseReluDense.wi_0", "layer.1.DenseReluDense.wi_1"),
    "mlp.fc2": ("layer.1.DenseReluDense.wo",), "mlp": ("layer.1.DenseReluDense",),
}

# Named update sets of the authors' code (utils.freeze_and_unfreeze_text_encoder); "first-attn" is HiRM's.
# Each maps the number of layers to [(layer index, module names)].
PRESETS: dict[str, Callable[[int], list[tuple[int, tuple[str, ...]]]]] = {
    "first-attn": lambda n: [(0, ATTN + MLP)],
    "mlp-only": lambda n: [(0, MLP)],
    "attn-only": lambda n: [(i, ATTN) for i in range(n)],
    "final-attn": lambda n: [(n - 1, ATTN)],
    "mix-attn": lambda n: [(0, ATTN + MLP), (n - 1, ATTN)],
    "mlp-final-attn": lambda n: [*((i, MLP) for i in range(n - 1)), (n - 1, ATTN + MLP)],  # few-shot erasing's
    "all": lambda n: [(i, ATTN + MLP) for i in range(n)],
}


# The key projection's bias adds q . b_k to every attention score of a query alike, which softmax ignores: its
# gradient is zero up to rounding, and Adam would turn that rounding (different on every host) into full steps.
NO_GRADIENT = ("self_attn.k_proj.bias",)


def trainable_parameter_names(encoder: TextEncoder, layers: str) -> list[str]:
    """Parameter names (weights and biases; never layer norms or embeddings, nor the key projection's bias, which
    no loss can move) for a preset or "0,1"."""
    prefix = _layers_prefix(encoder)
    names = [f"{prefix}.{i}.{m}.{p}" for i, mods in _layer_spec(encoder, layers) for clip_name in mods
             for m in module_names(encoder, clip_name) for p in ("weight", "bias")]
    params = dict(encoder.model.named_parameters())
    return [n for n in names if n in params and not n.endswith(NO_GRADIENT)]


def deepest_trained_layer(encoder: TextEncoder, layers: str) -> int:
    """Index of the deepest layer that `layers` trains: the layers above it are frozen, so equal outputs of it
    give equal final hidden states."""
    return max(i for i, _ in _layer_spec(encoder, layers))


def _layer_spec(encoder: TextEncoder, layers: str) -> list[tuple[int, tuple[str, ...]]]:
    """[(layer index, module names)] that a preset or "0,1" trains."""
    n = len(encoder.layers)
    if layers in PRESETS:
        return PRESETS[layers](n)
    try:
        idx = [int(x) for x in str(layers).split(",") if x.strip() != ""]
    except ValueError:
        raise HirmError(
            f"--layers {layers!r}: give layer indices like 0 or 0,1, or a preset: {', '.join(PRESETS)}"
        ) from None
    if not idx or any(i < -n or i >= n for i in idx):
        raise HirmError(f"--layers {layers!r}: this encoder has layers 0..{n - 1}")
    return [(i % n, ATTN + MLP) for i in idx]


def module_names(encoder: TextEncoder, clip_name: str) -> tuple[str, ...]:
    """The encoder's own name(s) for a module named as in CLIP ("self_attn.out_proj", "mlp.fc1", ...)."""
    return (clip_name,) if encoder.is_clip else T5_NAMES.get(clip_name, (clip_name,))


def _layers_prefix(encoder: TextEncoder) -> str:
    layers = encoder.layers
    for name, module in encoder.model.named_modules():
        if module is layers:
            return name
    raise HirmError("cannot locate the transformer layers of this text encoder")


def resolve_module(encoder: TextEncoder, layer: int, module: str) -> torch.nn.Module:
    layers = transformer_layers(encoder.model)
    if not -len(layers) <= layer < len(layers):
        raise HirmError(f"supervised layer {layer} does not exist (encoder has {len(layers)} layers)")
    target = layers[layer]
    if module in ("", "output"):
        return target
    for name in module_names(encoder, module):
        try:
            return target.get_submodule(name)
        except AttributeError:
            continue
    raise HirmError(f"supervised module {module!r} not found in layer {layer}")


class _Reached(Exception):
    """Raised by a forward hook once the wanted output exists: nothing after it in the forward is needed."""

    def __init__(self, value: torch.Tensor):
        self.value = value


# `supervise_module` value that names the encoder's final hidden states (after the final norm): what the denoiser
# reads. Its `supervise_layer` is ignored.
FINAL = "final"


def representation(encoder: TextEncoder, ids: torch.Tensor, layer: int, module: str) -> torch.Tensor:
    """Output of (layer, module) for token ids, with gradients if enabled (module FINAL: the final hidden
    states). The forward stops there: the layers after it (for HiRM's final attention output, the last MLP and
    the final norm) are never computed."""
    if module == FINAL:
        return encoder.model(input_ids=ids).last_hidden_state

    def stop(_m, _inp, out):
        raise _Reached(out[0] if isinstance(out, tuple) else out)

    handle = resolve_module(encoder, layer, module).register_forward_hook(stop)
    try:
        encoder.model(input_ids=ids)
    except _Reached as reached:
        return reached.value
    finally:
        handle.remove()
    raise HirmError(f"{encoder.name}: layer {layer} {module} did not run in the forward pass")


def representation_and_final(encoder: TextEncoder, ids: torch.Tensor, layer: int,
                             module: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(output of (layer, module), final hidden states) from one forward pass, with gradients if enabled."""
    if module == FINAL:
        final = encoder.model(input_ids=ids).last_hidden_state
        return final, final
    seen: list[torch.Tensor] = []

    def keep(_m, _inp, out):
        seen.append(out[0] if isinstance(out, tuple) else out)

    handle = resolve_module(encoder, layer, module).register_forward_hook(keep)
    try:
        final = encoder.model(input_ids=ids).last_hidden_state
    finally:
        handle.remove()
    return seen[0], final


def concept_span(encoder: TextEncoder, ids: list[int], names: list[str]) -> tuple[int, int] | None:
    """(first, last) token index of the earliest occurrence of any of `names` in a tokenized prompt."""
    best = None
    for name in names:
        sub = encoder.tokenizer(name, add_special_tokens=False)["input_ids"]
        hit = next((i for i in range(len(ids) - len(sub) + 1) if ids[i : i + len(sub)] == sub), None)
        if hit is not None and (best is None or hit < best[0]):
            best = (hit, hit + len(sub) - 1)
    return best
