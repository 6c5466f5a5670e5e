"""Continue mini-SD's UNet and mini-Flux on a leased GPU within a fixed time.

Renders the generator training set over the CPU cores (the first 80,000 images are the CPU runs' set), then
trains side by side on one GPU, each with its cosine schedule fitted to the time budget (a run whose raw export
is not in the checkout, to fit the device tool's size limit, starts from the shipped EMA weights instead):
  - unet:        mini-SD's UNet, from its raw export,
  - flux:        mini-Flux, from its raw export,
  - flux-pooled: mini-Flux from the same export with sequence dropout 0.5 (leans more on the pooled CLIP vector).
Writes each run's EMA weights (and the raw weights of unet and flux, to resume) as flat fp16 safetensors files
and a summary into OUT, at most 8 files (what the device tool brings back).

    OUT=/tmp/out python training/device_train.py --budget 370
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hirm.compat import diffusers_dtype

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "hirm" / "minicanvas" / "weights"


def prepare(runs: Path, n_images: int, workers: int, device: str) -> None:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    from hirm.minicanvas import train as mc_train
    from hirm.minicanvas.tokenizer import load_tokenizer

    components = runs / "components"
    components.mkdir(parents=True, exist_ok=True)
    for name in ("vae", "text_encoder"):
        if not (components / name).exists():
            (components / name).symlink_to(WEIGHTS / "minicanvas-sd" / name)
    vae = AutoencoderKL.from_pretrained(components / "vae", **diffusers_dtype(torch.float32)).eval().to(device)
    encoder = CLIPTextModel.from_pretrained(components / "text_encoder", torch_dtype=torch.float32).eval().to(device)
    unet_data = runs / "unet" / "data.safetensors"
    mc_train.prepare_generator_data(unet_data, vae, encoder, load_tokenizer(), n_images, seed=0, workers=workers)
    mc_train.prepare_flux_data(runs / "flux" / "data.safetensors", unet_data, n_images, seed=0, workers=workers)
    (runs / "flux-pooled").mkdir(exist_ok=True)
    if not (runs / "flux-pooled" / "data.safetensors").exists():
        (runs / "flux-pooled" / "data.safetensors").symlink_to(runs / "flux" / "data.safetensors")


def init_dir(runs: Path, what: str) -> Path:
    """A run's raw export if this checkout has it, else the shipped EMA weights with the shipped counters."""
    from hirm.minicanvas import flux
    from hirm.minicanvas.train import RESUME_STATE

    export_dir = Path(__file__).resolve().parents[1] / RESUME_STATE[what]  # this checkout's committed state
    shipped = "minicanvas-sd" if what == "unet" else "minicanvas-flux"
    if (export_dir / "state.json").exists():
        return export_dir
    init = runs / f"{what}-init"
    if (init / "state.json").exists():
        return init
    if what == "unet":
        shutil.copytree(WEIGHTS / shipped / "unet", init / "unet", dirs_exist_ok=True)
    else:
        from safetensors.torch import save_model

        model = flux.FluxTrainer(len(flux.make_t5_tokenizer()))
        model.transformer.load_state_dict(type(model.transformer).from_pretrained(
            WEIGHTS / shipped / "transformer", **diffusers_dtype(torch.float32)).state_dict())
        model.t5.load_state_dict(type(model.t5).from_pretrained(
            WEIGHTS / shipped / "text_encoder_2", dtype=torch.float32).state_dict())
        init.mkdir(parents=True, exist_ok=True)
        save_model(model, str(init / "flux.safetensors"))
    counters = json.loads((WEIGHTS / shipped / "training.json").read_text())[what]
    (init / "state.json").write_text(json.dumps({k: counters[k] for k in ("step", "seconds", "images_seen",
                                                                           "ema_step")}))
    return init


def train(what: str, run_dir: str, kwargs: dict) -> None:
    torch.set_num_threads(2)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    from hirm.minicanvas import train as mc_train

    mc_train.TRAINERS[what].run(Path(run_dir), **kwargs)


def export(runs: Path, out: Path) -> dict:
    def flat(path: Path, dst: str) -> None:
        tensors = load_file(str(path))
        save_file({k: v.half().contiguous() for k, v in tensors.items()}, str(out / dst))

    summary = {}
    for run, files in {
        "unet": {"ema_unet/diffusion_pytorch_model.safetensors": "unet_ema.safetensors",
                 "unet/diffusion_pytorch_model.safetensors": "unet_raw.safetensors"},
        "flux": {"ema_flux.safetensors": "flux_ema.safetensors", "flux.safetensors": "flux_raw.safetensors"},
        "flux-pooled": {"ema_flux.safetensors": "flux_pooled_ema.safetensors"},
    }.items():
        ckpt = runs / run / "checkpoint"
        if not (ckpt / "state.json").exists():
            summary[run] = "no checkpoint"
            continue
        for src, dst in files.items():
            flat(ckpt / src, dst)
        log = [json.loads(line) for line in (runs / run / "log.jsonl").read_text().splitlines()]
        summary[run] = {"state": json.loads((ckpt / "state.json").read_text()), "log": log[:: max(1, len(log) // 40)]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--budget", type=float, default=370.0, help="training seconds per run (runs go side by side)")
    p.add_argument("--total", type=float, default=560.0,
                   help="seconds the whole script may take (the device call's limit, less a margin)")
    p.add_argument("--jobs", default="unet,flux,flux-pooled", help="which runs, comma-separated")
    p.add_argument("--n-images", type=int, default=120_000)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="cuda")
    p.add_argument("--runs", type=Path, default=Path("/tmp/hirm-device-runs"))
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/hirm-device-out")))
    a = p.parse_args()
    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    prepare(a.runs, a.n_images, a.workers, a.device)
    budget = min(a.budget, (a.total - (time.time() - t0) - 70) / 1.05)  # 70 s: start-up, loading, export
    print(f"data ready in {time.time() - t0:.0f} s; training budget {budget:.0f} s per run", flush=True)
    common = {"device": a.device, "time_budget": budget, "batch_size": a.batch_size, "save_every": 500,
              "steps": 1_000_000}
    jobs = {
        "unet": ("unet", {**common, "n_images": a.n_images}),
        "flux": ("flux", common),
        "flux-pooled": ("flux", {**common, "sequence_dropout": 0.5}),
    }
    jobs = {name: (what, {**kw, "init_from": init_dir(a.runs, what)})
            for name, (what, kw) in jobs.items() if name in a.jobs.split(",")}
    ctx = multiprocessing.get_context("spawn")
    procs = {name: ctx.Process(target=train, args=(what, str(a.runs / name), kw)) for name, (what, kw) in jobs.items()}
    for proc in procs.values():
        proc.start()
    hard_stop = t0 + a.total - 15  # leaves time to export whatever checkpoint each run has
    for name, proc in procs.items():
        proc.join(max(1.0, hard_stop - time.time()))
        if proc.is_alive():
            print(f"{name}: past the hard stop, terminated (its last checkpoint is exported)", flush=True)
            proc.terminate()
            proc.join()
    summary = export(a.runs, a.out)
    for name, s in summary.items():
        print(name, s if isinstance(s, str) else s["state"], flush=True)
    print(f"done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
