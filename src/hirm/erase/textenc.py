"""What every text-encoder erasure shares: choosing trainable tensors, reading a layer's output, and the
one optimisation loop (seeded, progress bar, NaN guard, leaves the encoder as it found it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from hirm.encoders import TextEncoder, transformer_layers
from hirm.errors import HirmError

ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
MLP = ("mlp.fc1", "mlp.fc2")

# Named update sets of the authors' code (utils.freeze_and_unfreeze_text_encoder); "first-attn" is HiRM's.
# Each maps the number of layers to [(layer index, module names)].
PRESETS: dict[str, Callable[[int], list[tuple[int, tuple[str, ...]]]]] = {
    "first-attn": lambda n: [(0, ATTN + MLP)],
    "mlp-only": lambda n: [(0, MLP)],
    "attn-only": lambda n: [(i, ATTN) for i in range(n)],
    "final-attn": lambda n: [(n - 1, ATTN)],
    "mix-attn": lambda n: [(0, ATTN + MLP), (n - 1, ATTN)],
    "all": lambda n: [(i, ATTN + MLP) for i in range(n)],
}


def trainable_parameter_names(encoder: TextEncoder, layers: str) -> list[str]:
    """Parameter names (weights and biases; never layer norms or embeddings) for a preset or "0,1"."""
    n = len(encoder.layers)
    if layers in PRESETS:
        spec = PRESETS[layers](n)
    else:
        try:
            idx = [int(x) for x in str(layers).split(",") if x.strip() != ""]
        except ValueError:
            raise HirmError(
                f"--layers {layers!r}: give layer indices like 0 or 0,1, or a preset: {', '.join(PRESETS)}"
            ) from None
        if not idx or any(i < -n or i >= n for i in idx):
            raise HirmError(f"--layers {layers!r}: this encoder has layers 0..{n - 1}")
        spec = [(i % n, ATTN + MLP) for i in idx]
    prefix = _layers_prefix(encoder)
    names = [f"{prefix}.{i}.{m}.{p}" for i, mods in spec for m in mods for p in ("weight", "bias")]
    params = dict(encoder.model.named_parameters())
    return [n for n in names if n in params]


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
    try:
        return target.get_submodule(module)
    except AttributeError:
        raise HirmError(f"supervised module {module!r} not found in layer {layer}") from None


@contextmanager
def capture_output(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record `module`'s output on each forward (the first tensor if it returns a tuple)."""
    seen: list[torch.Tensor] = []

    def hook(_m, _inp, out):
        seen.append(out[0] if isinstance(out, tuple) else out)

    handle = module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def representation(encoder: TextEncoder, ids: torch.Tensor, layer: int, module: str) -> torch.Tensor:
    """Output of (layer, module) for token ids, with gradients if enabled."""
    with capture_output(resolve_module(encoder, layer, module)) as seen:
        encoder.model(input_ids=ids)
    return seen[-1]


@dataclass
class LoopResult:
    tensors: dict[str, torch.Tensor]
    losses: list[float]
    seconds: float


@dataclass
class OptimConfig:
    steps: int
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float


def optimise(encoder: TextEncoder, names: list[str], loss_fn: Callable[[int], torch.Tensor], opt: OptimConfig,
             desc: str, progress: bool = True) -> LoopResult:
    """Train the `names` tensors of `encoder` for `opt.steps` AdamW steps of `loss_fn(step)`.

    Returns the trained tensors and restores the encoder's original weights and grad flags: erasure
    produces a patch, it never silently edits the caller's model.
    """
    model = encoder.model
    if model.dtype != torch.float32:
        raise HirmError(f"{encoder.name} is {model.dtype}; erasure trains in fp32: load the model in float32")
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    originals = {n: params[n].detach().clone() for n in names}
    was_training = model.training
    model.eval()
    for n, p in params.items():
        p.requires_grad_(n in originals)
    optimizer = torch.optim.AdamW([params[n] for n in names], lr=opt.lr, betas=opt.betas, eps=opt.eps,
                                  weight_decay=opt.weight_decay)
    losses: list[float] = []
    start = time.perf_counter()
    try:
        for step in tqdm(range(opt.steps), desc=desc, disable=not progress, leave=False):
            loss = loss_fn(step)
            value = float(loss.detach())
            if not torch.isfinite(loss.detach()):
                raise HirmError(f"{desc}: loss became {value} at step {step}: lower --lr (now {opt.lr:g}) "
                                "or --target-norm; nothing was written")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(value)
        trained = {n: params[n].detach().clone() for n in names}
    finally:
        with torch.no_grad():
            for n, t in originals.items():
                params[n].copy_(t)
        for n, p in params.items():
            p.requires_grad_(flags[n])
            p.grad = None
        model.train(was_training)
    return LoopResult(trained, losses, time.perf_counter() - start)


@contextmanager
def temporarily(encoder: TextEncoder, tensors: dict[str, torch.Tensor]):
    """Run a block with `tensors` written into the encoder, then restore."""
    params = dict(encoder.model.named_parameters())
    saved = {n: params[n].detach().clone() for n in tensors}
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    try:
        yield encoder
    finally:
        with torch.no_grad():
            for n, t in saved.items():
                params[n].copy_(t)
