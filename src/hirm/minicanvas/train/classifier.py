"""The judge: object and style heads on rendered images."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from hirm.minicanvas import world
from hirm.minicanvas.classifier import HEADS, MiniCanvasClassifier, to_tensor
from hirm.minicanvas.train.loop import (
    run_loop,
    seed_everything,
)


def batches(batch_size: int, seed: int) -> Iterator[world.Batch]:
    """Endless stream of freshly rendered batches; batch k depends only on (seed, k)."""
    k = 0
    while True:
        yield world.render_batch(batch_size, seed=seed * 1_000_003 + k)
        k += 1


def evaluate_classifier(model: MiniCanvasClassifier, n_per_pair: int = 20, seed: int = 999_999) -> dict:
    """Held-out accuracy per head and per object / style class."""
    model.eval()
    b = world.render_every_pair(n_per_pair, seed)
    labels = b.labels()
    pred = model.predict(to_tensor(b.images))
    out: dict = {}
    for h in HEADS:
        out[f"{h}_acc"] = float((pred[h] == torch.as_tensor(labels[h])).float().mean())
    y_obj = torch.as_tensor(labels["object"])
    y_sty = torch.as_tensor(labels["style"])
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
        return {"loss": float(loss.detach()), "obj": float(losses["object"].detach()),
                "sty": float(losses["style"].detach()),
                "batch": batch_size}

    state = run_loop(run_dir, {"classifier": model}, opt, steps, step, lr, save_every, desc="classifier")
    metrics = evaluate_classifier(model)
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, **asdict(state)}, indent=1))
    return model
