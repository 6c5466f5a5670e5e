"""What every MiniCanvas trainer shares: the run state and its checkpoints (the model in its `save_pretrained`
form plus the optimizer state flattened into a safetensors file, no pickle), the cosine schedule, the resumable
loop with its time budget, the update step with EMA, and seeding."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_file, save_model
from torch import nn
from tqdm.auto import tqdm

from hirm.io import atomic_dir


def _save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": v.detach().to("cpu", copy=True) if torch.is_tensor(v) else torch.tensor(v)
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
    with atomic_dir(run_dir / "checkpoint", replace=True) as tmp:
        for name, model in models.items():
            if hasattr(model, "save_pretrained"):
                model.save_pretrained(tmp / name)
            else:
                save_model(model, str(tmp / f"{name}.safetensors"))  # handles tied weights (T5 embeddings)
        _save_optimizer(opt, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps({**asdict(state), **(extra or {})}, indent=1))


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
            load_model(model, str(ckpt / f"{name}.safetensors"))
    _load_optimizer(opt, ckpt / "optimizer.safetensors")
    raw = json.loads((ckpt / "state.json").read_text())
    return RunState(**{k: raw[k] for k in ("step", "seconds", "images_seen")})


def resume_with_ema(run_dir: Path, models: dict[str, nn.Module], opt: torch.optim.Optimizer, ema_model: nn.Module,
                    ema_decay: float, init_from: Path | None, seed_from_export: Callable[[Path], None]):
    """The run's state and EMA: from its own checkpoint, or, for a fresh run with a committed export at
    `init_from` (raw weights + counters), from that export (`seed_from_export` loads its weights)."""
    from diffusers.training_utils import EMAModel

    state = load_checkpoint(run_dir, models, opt)
    counters = run_dir / "checkpoint" / "state.json"
    if not state.step and init_from is not None and (init_from / "state.json").exists():
        seed_from_export(init_from)
        counters = init_from / "state.json"
        raw = json.loads(counters.read_text())
        state = RunState(**{k: raw[k] for k in ("step", "seconds", "images_seen")})
    ema = EMAModel(ema_model.parameters(), decay=ema_decay, use_ema_warmup=True, power=0.75)
    if state.step:
        ema.optimization_step = json.loads(counters.read_text())["ema_step"]
    return state, ema


def cosine_lr(step: int, total: int, base: float, warmup: int = 100, floor: float = 0.05) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def run_loop(run_dir: Path, models: dict[str, nn.Module], opt: torch.optim.Optimizer, total_steps: int,
             step_fn: Callable[[int], dict[str, float]], base_lr: float, save_every: int = 200,
             desc: str = "train", before_save: Callable[[], dict] | None = None,
             warmup: int = 100, state: RunState | None = None, time_budget: float | None = None,
             schedule_start: int = 0) -> RunState:
    """The one training loop: resume, step with a cosine schedule, log, checkpoint, finish.

    `before_save` runs before each checkpoint and returns extra counters stored in its state.json; pass
    `state` when the caller already restored the checkpoint itself. With `time_budget` (seconds) the run
    measures its own speed after 100 and 1000 steps and shortens `total_steps` so that the cosine schedule
    ends within the budget (a leased accelerator's time is fixed, its speed is not known in advance), and
    stops and saves at 1.05 x the budget whatever the schedule. `schedule_start` restarts the warm-up and cosine
    at that step (a new phase of a run resumed from elsewhere) instead of continuing them from step 0.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if state is None:
        state = load_checkpoint(run_dir, models, opt)
    log = (run_dir / "log.jsonl").open("a")
    bar = tqdm(total=total_steps, initial=state.step, desc=desc, mininterval=5)
    t_last = t_start = time.time()
    first, cap = state.step, total_steps
    while state.step < total_steps:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(state.step - schedule_start, total_steps - schedule_start, base_lr, warmup=warmup)
        metrics = step_fn(state.step)
        state.step += 1
        now = time.time()
        state.seconds += now - t_last
        t_last = now
        state.images_seen += int(metrics.pop("batch", 0))
        bar.update(1)
        if time_budget is not None and state.step - first in (100, 1000):
            per_step = (now - t_start) / (state.step - first)
            total_steps = min(cap, state.step + int((t_start + time_budget - now) / per_step))
            bar.total = total_steps
        if time_budget is not None and now - t_start > 1.05 * time_budget:  # slower than measured: stop, save
            total_steps = state.step
        if state.step % 20 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()})
            log.write(json.dumps({"step": state.step, "seconds": round(state.seconds, 1), **metrics}) + "\n")
            log.flush()
        if state.step % save_every == 0 or state.step == total_steps:
            extra = before_save() if before_save is not None else None
            save_checkpoint(run_dir, models, opt, state, extra)
    bar.close()
    return state


def update(loss: torch.Tensor, model: nn.Module, opt: torch.optim.Optimizer, ema=None, clip: float = 1.0) -> None:
    """One optimizer step on `loss` with gradient clipping, then the EMA's step if there is one."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    if ema is not None:
        ema.step(model.parameters())


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
