"""Screen: mini-Flux with one token per latent position (64 tokens of 8 values, what a 16x16x2 latent packed 2x2
would give) instead of FluxPipeline's 2x2 patches of mini-SD's 8x8x8 latents (16 tokens of 32), distilled from
mini-SD. A shippable version needs its own VAE with 16x16x2 latents (not built), so this script trains with the
trainer's own loop (`train_flux`, distill=1) with the token layout swapped in, and judges with FluxPipeline's
sampler written out (25 Euler steps on linear sigmas, true CFG 5; noise drawn as flux_handoff.py draws it, on
which the 16-token distilled state scores 0.800) and mini-SD's VAE on the latents.

    python benchmarks/flux_per_position.py train runs/per-position 2700 [--init training/minicanvas-flux-per-position]
    python benchmarks/flux_per_position.py judge runs/per-position/checkpoint/ema_flux.safetensors
    python benchmarks/flux_per_position.py export runs/per-position training/minicanvas-flux-per-position

`train` resumes RUN when it has a checkpoint; a fresh RUN starts from `--init`: a per-position export as is, or
the 16-token resume state (training/minicanvas-flux) with its patch embedding summed and its read-out averaged
over the 4 positions of a patch (the inner blocks as they are). It needs mini-SD's rendered set
(runs/unet/data.safetensors) and mini-Flux's (runs/flux-data/data.safetensors).
"""

import argparse
import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import FluxPipeline
from flux_handoff import judge_flow
from safetensors.torch import load_file, load_model, save_file

from hirm.minicanvas import flux, registry, world
from hirm.minicanvas.train import train_flux
from hirm.minicanvas.train.flux import export_flux_resume_state

SIZE, CHANNELS = 8, 8  # mini-SD's latents: 8 x 8 positions of 8 channels
# flux's own builders, held before per_position() swaps them for the ones below (which call them)
PACKED_TRANSFORMER, PACKED_IMAGE_IDS = flux.make_transformer, flux.image_ids


def make_transformer(latent_channels: int = CHANNELS, pooled_dim: int = 256, sequence_dim: int = 128):
    """flux.make_transformer's model with one latent position per token: its model for latents of a quarter of the
    channels at twice the side, packed 2x2 (the 16x16x2 layout), so each token holds one position's channels."""
    return PACKED_TRANSFORMER(latent_channels // 4, pooled_dim, sequence_dim)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, HW, C]: a token per position."""
    b, c, h, w = latents.shape
    return latents.permute(0, 2, 3, 1).reshape(b, h * w, c)


def unpack(tokens: torch.Tensor) -> torch.Tensor:
    b, _, c = tokens.shape
    return tokens.view(b, SIZE, SIZE, c).permute(0, 3, 1, 2)


def image_ids(h: int, w: int) -> torch.Tensor:
    """Positional ids (0, row, column) of every position: flux.image_ids of the latents at twice the side."""
    return PACKED_IMAGE_IDS(2 * h, 2 * w)


@contextmanager
def per_position():
    """The trainer's token layout swapped for one token per position inside the block."""
    saved = flux.make_transformer, flux.pack, flux.image_ids
    flux.make_transformer, flux.pack, flux.image_ids = make_transformer, pack, image_ids
    try:
        yield
    finally:
        flux.make_transformer, flux.pack, flux.image_ids = saved


def fold(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A 16-token state as a per-position one: a patch's input is 4 positions x C channels (channel-major, as
    flux.pack lays it out), so summing the embedding over the 4 positions embeds one position as the patch of 4
    copies would be, and the read-out becomes the mean of the patch's 4."""
    state = {k: v.float() for k, v in state.items()}
    w_in = state["transformer.x_embedder.weight"]
    if w_in.shape[1] == CHANNELS:
        return state
    state["transformer.x_embedder.weight"] = w_in.view(-1, CHANNELS, 4).sum(-1)
    state["transformer.proj_out.weight"] = state["transformer.proj_out.weight"].view(CHANNELS, 4, -1).mean(1)
    state["transformer.proj_out.bias"] = state["transformer.proj_out.bias"].view(CHANNELS, 4).mean(1)
    return state


def train(run: Path, seconds: float, init: Path, lr: float) -> None:
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "data.safetensors").exists():
        os.symlink(Path("runs/flux-data/data.safetensors").resolve(), run / "data.safetensors")
    start_from = run / "init"
    if not start_from.exists():
        start_from.mkdir()
        for name in ("flux", "ema_flux"):
            save_file(fold(load_file(str(init / f"{name}.safetensors"))), str(start_from / f"{name}.safetensors"))
        (start_from / "state.json").write_text((init / "state.json").read_text())
    start = json.loads((start_from / "state.json").read_text())["step"]
    with per_position():  # lr constant after the warm-up: a cosine over 100k steps
        train_flux(run, steps=start + 100_000, batch_size=64, lr=lr, unet_run=Path("runs/unet"), init_from=start_from,
                   distill=1.0, schedule_start=start, time_budget=seconds)


@torch.no_grad()
def judge(checkpoint: Path, seeds: tuple[int, ...] = (0, 1), steps: int = 25, guidance: float = 5.0) -> None:
    with per_position():
        model = flux.FluxTrainer(len(flux.make_t5_tokenizer()))
    load_model(model, str(checkpoint))
    model.eval()
    sd, classifier = registry.load_pipeline("minicanvas"), registry.load_classifier()
    cells = [(o, s) for o in range(len(world.OBJECTS)) for s in range(len(world.STYLES))]
    prompts = [world.EVAL_TEMPLATES[0].format(object=world.OBJECTS[o], style=world.STYLES[s]) for o, s in cells]
    n, ids = len(prompts), image_ids(SIZE, SIZE)
    encoder = FluxPipeline(scheduler=None, vae=None, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer,
                           text_encoder_2=model.t5, tokenizer_2=flux.make_t5_tokenizer(), transformer=None)
    (seq, pooled), (empty_seq, empty_pooled) = (
        encoder.encode_prompt(q, q, device="cpu", max_sequence_length=flux.T5_MAX_LENGTH)[:2]
        for q in (prompts, [""]))
    branches = [(seq, pooled), (empty_seq.expand(n, -1, -1), empty_pooled.expand(n, -1))]

    def velocity(x: torch.Tensor, t: torch.Tensor, branch: int) -> torch.Tensor:
        s, p = branches[branch]
        return unpack(model.transformer(hidden_states=pack(x), timestep=t, pooled_projections=p,
                                        encoder_hidden_states=s, txt_ids=s.new_zeros(s.shape[1], 3), img_ids=ids,
                                        return_dict=False)[0])

    objects, styles, per = judge_flow(lambda x, t: (velocity(x, t, 0), velocity(x, t, 1)), sd, classifier, cells,
                                      list(seeds), steps, guidance)
    print(f"{checkpoint}: object {objects:.3f} style {styles:.3f}  {per}", flush=True)

def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("run", type=Path)
    t.add_argument("seconds", type=float)
    t.add_argument("--init", type=Path, default=Path("training/minicanvas-flux"))
    t.add_argument("--lr", type=float, default=3e-4)
    j = sub.add_parser("judge")
    j.add_argument("checkpoint", type=Path)
    e = sub.add_parser("export")
    e.add_argument("run", type=Path)
    e.add_argument("out", type=Path)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.command == "train":
        train(a.run, a.seconds, a.init, a.lr)
    elif a.command == "judge":
        judge(a.checkpoint)
    else:
        export_flux_resume_state(a.run, a.out)


if __name__ == "__main__":
    main()
