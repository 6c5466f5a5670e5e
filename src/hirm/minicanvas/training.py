"""Resumable training loops for the MiniCanvas models (CPU-friendly, seeded, safetensors only).

Each `train_*` function trains one model for a number of steps, checkpointing to `run_dir` every
`save_every` steps so that a killed run resumes where it stopped. Checkpoints hold the model in its
`save_pretrained` form plus the optimizer state flattened into a safetensors file (no pickle).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from hirm.minicanvas import world
from hirm.minicanvas.classifier import HEADS, MiniCanvasClassifier, to_tensor

# ------------------------------------------------------------------------------------------ state


def _save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": v.detach().clone() if torch.is_tensor(v) else torch.tensor(v)
               for i, st in sd["state"].items() for k, v in st.items()}
    meta = {"param_groups": json.dumps(sd["param_groups"])}
    save_file(tensors, str(path), metadata=meta)


def _load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = f.get_tensor(key)
    opt.load_state_dict({"state": state, "param_groups": groups})


@dataclass
class RunState:
    step: int = 0
    seconds: float = 0.0
    images_seen: int = 0


def save_checkpoint(run_dir: Path, models: dict[str, nn.Module], opt: torch.optim.Optimizer, state: RunState,
                    extra: dict | None = None) -> None:
    """Atomically replace `run_dir/checkpoint` with the current models, optimizer and counters."""
    tmp = run_dir / "checkpoint.tmp"
    final = run_dir / "checkpoint"
    if tmp.exists():
        _rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, model in models.items():
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(tmp / name)
        else:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / f"{name}.safetensors"))
    _save_optimizer(opt, tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps({**asdict(state), **(extra or {})}, indent=1))
    old = run_dir / "checkpoint.old"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        _rmtree(old)


def load_checkpoint(run_dir: Path, models: dict[str, nn.Module], opt: torch.optim.Optimizer) -> RunState:
    """Restore models/optimizer from `run_dir/checkpoint` if present; returns counters (zero if fresh)."""
    ckpt = run_dir / "checkpoint"
    if not (ckpt / "state.json").exists():
        return RunState()
    for name, model in models.items():
        if (ckpt / name).is_dir():
            loaded = type(model).from_pretrained(ckpt / name)
            model.load_state_dict(loaded.state_dict())
        else:
            model.load_state_dict(load_file(str(ckpt / f"{name}.safetensors")))
    _load_optimizer(opt, ckpt / "optimizer.safetensors")
    raw = json.loads((ckpt / "state.json").read_text())
    return RunState(**{k: raw[k] for k in ("step", "seconds", "images_seen")})


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def cosine_lr(step: int, total: int, base: float, warmup: int = 100, floor: float = 0.05) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def run_loop(run_dir: Path, models: dict[str, nn.Module], opt: torch.optim.Optimizer, total_steps: int,
             step_fn: Callable[[int], dict[str, float]], base_lr: float, save_every: int = 200,
             desc: str = "train", on_save: Callable[[RunState], None] | None = None,
             warmup: int = 100) -> RunState:
    """The one training loop: resume, step with a cosine schedule, log, checkpoint, finish."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(run_dir, models, opt)
    log = (run_dir / "log.jsonl").open("a")
    bar = tqdm(total=total_steps, initial=state.step, desc=desc, mininterval=5)
    t_last = time.time()
    while state.step < total_steps:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(state.step, total_steps, base_lr, warmup=warmup)
        metrics = step_fn(state.step)
        state.step += 1
        now = time.time()
        state.seconds += now - t_last
        t_last = now
        state.images_seen += int(metrics.pop("batch", 0))
        bar.update(1)
        if state.step % 20 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()})
            log.write(json.dumps({"step": state.step, "seconds": round(state.seconds, 1), **metrics}) + "\n")
            log.flush()
        if state.step % save_every == 0 or state.step == total_steps:
            save_checkpoint(run_dir, models, opt, state)
            if on_save is not None:
                on_save(state)
    bar.close()
    return state


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


# ------------------------------------------------------------------------------------------ classifier


def batches(batch_size: int, seed: int) -> Iterator[world.Batch]:
    """Endless stream of freshly rendered batches; batch k depends only on (seed, k)."""
    k = 0
    while True:
        yield world.render_batch(batch_size, seed=seed * 1_000_003 + k)
        k += 1


def evaluate_classifier(model: MiniCanvasClassifier, n_per_pair: int = 20, seed: int = 999_999) -> dict:
    """Held-out accuracy per head and per object / style class."""
    model.eval()
    imgs, labels = [], {h: [] for h in HEADS}
    for o in range(len(world.OBJECTS)):
        for s in range(len(world.STYLES)):
            b = world.render_batch(n_per_pair, seed=seed + 1000 * o + s, object=o, style=s)
            imgs.append(b.images)
            b_labels = b.labels()
            for h in HEADS:
                labels[h].append(b_labels[h])
    pred = model.predict(to_tensor(np.concatenate(imgs)))
    out: dict = {}
    for h in HEADS:
        y = torch.as_tensor(np.concatenate(labels[h]))
        out[f"{h}_acc"] = float((pred[h] == y).float().mean())
    y_obj = torch.as_tensor(np.concatenate(labels["object"]))
    y_sty = torch.as_tensor(np.concatenate(labels["style"]))
    out["per_object"] = {n: float((pred["object"][y_obj == i] == i).float().mean())
                         for i, n in enumerate(world.OBJECTS)}
    out["per_style"] = {n: float((pred["style"][y_sty == i] == i).float().mean()) for i, n in enumerate(world.STYLES)}
    model.train()
    return out


def train_classifier(run_dir: Path, steps: int = 6000, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                     save_every: int = 250) -> MiniCanvasClassifier:
    seed_everything(seed)
    model = MiniCanvasClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    stream_seed = seed
    loss_fn = nn.CrossEntropyLoss()

    def step(i: int) -> dict[str, float]:
        b = world.render_batch(batch_size, seed=stream_seed * 1_000_003 + i)
        x = to_tensor(b.images)
        logits = model(x)
        labels = b.labels()
        losses = {h: loss_fn(logits[h], torch.as_tensor(labels[h])) for h in HEADS}
        # object and style are what the judge is for; the other heads only shape the features
        loss = 2 * losses["object"] + 2 * losses["style"] + losses["colour"] + losses["background"] + losses["size"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss), "obj": float(losses["object"]), "sty": float(losses["style"]),
                "batch": batch_size}

    state = run_loop(run_dir, {"classifier": model}, opt, steps, step, lr, save_every, desc="classifier")
    metrics = evaluate_classifier(model)
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, **asdict(state)}, indent=1))
    return model


# ------------------------------------------------------------------------------------------ autoencoder


def make_vae():
    from diffusers import AutoencoderKL

    # 32x32x3 -> 8x8x4, as SD's VAE (4 latent channels; 4x instead of 8x downsampling at this image size)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 128), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=16, sample_size=world.IMAGE_SIZE, mid_block_add_attention=False,
    )


def train_vae(run_dir: Path, steps: int = 4000, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
              kl_weight: float = 1e-6, save_every: int = 250):
    seed_everything(seed)
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)

    def step(i: int) -> dict[str, float]:
        x = to_tensor(world.render_batch(batch_size, seed=seed * 1_000_003 + 500_000 + i).images)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=gen)
        recon = vae.decode(z).sample
        rec = (recon - x).abs().mean() + ((recon - x) ** 2).mean()
        kl = posterior.kl().mean()
        loss = rec + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        return {"loss": float(loss.detach()), "rec": float(rec.detach()), "kl": float(kl.detach()),
                "batch": batch_size}

    state = run_loop(run_dir, {"vae": vae}, opt, steps, step, lr, save_every, desc="vae")
    (run_dir / "metrics.json").write_text(json.dumps({**evaluate_vae(vae), **asdict(state)}, indent=1))
    return vae


@torch.no_grad()
def evaluate_vae(vae, n_per_pair: int = 10, seed: int = 777_777) -> dict:
    """Reconstruction error and, if the classifier exists, its accuracy on reconstructions."""
    vae.eval()
    imgs, objs, stys = [], [], []
    for o in range(len(world.OBJECTS)):
        for s in range(len(world.STYLES)):
            b = world.render_batch(n_per_pair, seed=seed + 1000 * o + s, object=o, style=s)
            imgs.append(b.images)
            objs.append(b.objects)
            stys.append(b.styles)
    x = to_tensor(np.concatenate(imgs))
    recon = torch.cat([vae.decode(vae.encode(c).latent_dist.mode()).sample for c in x.split(256)]).clamp(-1, 1)
    out = {"recon_mse": float(((recon - x) ** 2).mean())}
    from hirm.minicanvas import registry

    if (registry.CLASSIFIER / "config.json").exists():
        clf = registry.load_classifier()
        pred = clf.predict(recon)
        out["recon_object_acc"] = float((pred["object"] == torch.as_tensor(np.concatenate(objs))).float().mean())
        out["recon_style_acc"] = float((pred["style"] == torch.as_tensor(np.concatenate(stys))).float().mean())
    vae.train()
    return out


def main() -> None:  # pragma: no cover - manual entry for background runs
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("what")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=int(os.environ.get("HIRM_THREADS", "2")))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    kw = {} if a.steps is None else {"steps": a.steps}
    {"classifier": train_classifier, "vae": train_vae}[a.what](a.run_dir, **kw)


if __name__ == "__main__":  # pragma: no cover
    main()
