"""Resumable training loops for the MiniCanvas models (CPU-friendly, seeded, safetensors only).

Each `train_*` function trains one model for a number of steps, checkpointing to `run_dir` every
`save_every` steps so that a killed run resumes where it stopped. Checkpoints hold the model in its
`save_pretrained` form plus the optimizer state flattened into a safetensors file (no pickle).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn
from tqdm.auto import tqdm

from hirm.io import atomic_dir, atomic_file
from hirm.minicanvas import registry, world
from hirm.minicanvas.build import inference_scheduler, training_scheduler
from hirm.minicanvas.classifier import HEADS, MiniCanvasClassifier, to_tensor
from hirm.registry import Entry, Registry

# ------------------------------------------------------------------------------------------ state


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


def cosine_lr(step: int, total: int, base: float, warmup: int = 100, floor: float = 0.05) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def run_loop(run_dir: Path, models: dict[str, nn.Module], opt: torch.optim.Optimizer, total_steps: int,
             step_fn: Callable[[int], dict[str, float]], base_lr: float, save_every: int = 200,
             desc: str = "train", before_save: Callable[[], dict] | None = None,
             warmup: int = 100, state: RunState | None = None, time_budget: float | None = None) -> RunState:
    """The one training loop: resume, step with a cosine schedule, log, checkpoint, finish.

    `before_save` runs before each checkpoint and returns extra counters stored in its state.json; pass
    `state` when the caller already restored the checkpoint itself. With `time_budget` (seconds) the run
    measures its own speed after 100 and 1000 steps and shortens `total_steps` so that the cosine schedule
    ends within the budget (a leased accelerator's time is fixed, its speed is not known in advance), and
    stops and saves at 1.05 x the budget whatever the schedule.
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
            g["lr"] = cosine_lr(state.step, total_steps, base_lr, warmup=warmup)
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


# ------------------------------------------------------------------------------------------ autoencoder


def make_vae():
    from diffusers import AutoencoderKL

    # 32x32x3 -> 8x8x8. 4x downsampling as SD's 8x does at 256 px; 8 latent channels rather than SD's 4
    # (SD3 and Flux use 16) so that 2-3 px textures (stripes, checks, grain) survive a small, quickly
    # trained autoencoder. Measured: 4 channels lost every texture after 260 steps.
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(16, 32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8, sample_size=world.IMAGE_SIZE, mid_block_add_attention=False,
    )


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def edge_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical image gradients: keeps 1 px lines a per-pixel loss blurs."""
    return sum((a - b).abs().mean() for a, b in zip(image_gradients(recon), image_gradients(x), strict=True))


def train_vae(run_dir: Path, steps: int = 3000, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
              kl_weight: float = 1e-6, edge_weight: float = 0.0, save_every: int = 250):
    """AutoencoderKL on rendered images: L1 + MSE reconstruction, a tiny KL term (as SD), and optionally an L1
    term on image gradients (`edge_weight`), which keeps 1 px lines (mosaic grout, pixel-block edges) that
    the plain loss blurs away."""
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
        if edge_weight > 0:
            loss = loss + edge_weight * edge_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        return {"loss": float(loss.detach()), "rec": float(rec.detach()), "kl": float(kl.detach()),
                "batch": batch_size}

    state = run_loop(run_dir, {"vae": vae}, opt, steps, step, lr, save_every, desc="vae")
    (run_dir / "metrics.json").write_text(json.dumps({**evaluate_vae(vae), **asdict(state)}, indent=1))
    return vae


def spectrum(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.rfft2(x, norm="ortho").abs()


def train_vae_decoder(run_dir: Path, steps: int = 5000, batch_size: int = 64, lr: float = 3e-4, seed: int = 0,
                      edge_weight: float = 3.0, fft_weight: float = 1.0, init: Path | None = None,
                      save_every: int = 250):
    """Fine-tune only the decoder of a trained VAE (the latent space, and so the UNet trained on it, stay
    valid), with stronger texture terms than `train_vae`: image-gradient L1 (`edge_weight`) and L1 on the
    Fourier magnitude spectrum (`fft_weight`), which a per-pixel loss averages away on periodic textures."""
    from diffusers import AutoencoderKL


    seed_everything(seed)
    vae = AutoencoderKL.from_pretrained(init or registry.FOLDERS["minicanvas"] / "vae", torch_dtype=torch.float32)
    vae.requires_grad_(False)
    trained = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for q in trained:
        q.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)

    def step(i: int) -> dict[str, float]:
        x = to_tensor(world.render_batch(batch_size, seed=seed * 1_000_003 + 9_500_000 + i).images)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
        recon = vae.decode(z).sample
        rec = (recon - x).abs().mean() + ((recon - x) ** 2).mean()
        fft = (spectrum(recon) - spectrum(x)).abs().mean()
        loss = rec + edge_weight * edge_loss(recon, x) + fft_weight * fft
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach()), "rec": float(rec.detach()), "batch": batch_size}

    state = run_loop(run_dir, {"vae": vae}, opt, steps, step, lr, save_every, desc="vae decoder")
    (run_dir / "metrics.json").write_text(json.dumps({**evaluate_vae(vae), **asdict(state)}, indent=1))
    return vae


@torch.no_grad()
def evaluate_vae(vae, n_per_pair: int = 10, seed: int = 777_777) -> dict:
    """Reconstruction error and, if the classifier exists, its accuracy on reconstructions."""
    vae.eval()
    b = world.render_every_pair(n_per_pair, seed)
    x = to_tensor(b.images)
    recon = torch.cat([vae.decode(vae.encode(c).latent_dist.mode()).sample for c in x.split(256)]).clamp(-1, 1)
    out = {"recon_mse": float(((recon - x) ** 2).mean())}

    if (registry.CLASSIFIER / "config.json").exists():
        clf = registry.load_classifier()
        pred = clf.predict(recon)
        out["recon_object_acc"] = float((pred["object"] == torch.as_tensor(b.objects)).float().mean())
        styles = torch.as_tensor(b.styles)
        out["recon_style_acc"] = float((pred["style"] == styles).float().mean())
        out["recon_style_acc_per_style"] = {name: round(float((pred["style"][styles == i] == i).float().mean()), 3)
                                            for i, name in enumerate(world.STYLES)}
    vae.train()
    return out


# ------------------------------------------------------------------------------------------ text encoder


def make_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=256,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, **{registry.FAMILY_KEY: registry.FAMILY},
    )
    return CLIPTextModel(cfg)


class LiTHeads(nn.Module):
    """Trainable projections of the LiT objective (not shipped: SD uses the encoder's hidden states)."""

    def __init__(self, text_dim: int = 256, image_dim: int = 256, dim: int = 256):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(image_dim, 512), nn.GELU(), nn.Linear(512, dim))
        self.pooled = nn.Linear(text_dim, dim, bias=False)  # EOS token (CLIP's pooled output; Flux's vector)
        self.sequence = nn.Linear(text_dim, dim, bias=False)  # mean over all 77 positions (what SD attends to)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


def compatibility(batch: world.Batch) -> torch.Tensor:
    """[captions, images] bool: image j shows everything caption i names (multi-positive InfoNCE targets)."""
    labels = {k: torch.as_tensor(v) for k, v in batch.labels().items()}
    n = len(batch.captions)
    ok = torch.ones(n, n, dtype=torch.bool)
    for i, names in enumerate(batch.mentioned):
        for attr in names:
            ok[i] &= labels[attr] == labels[attr][i]
    return ok


def multi_positive_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where each row may have several positives."""
    neg_inf = torch.finfo(logits.dtype).min
    t2i = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positives, neg_inf), 1)
    i2t = torch.logsumexp(logits, 0) - torch.logsumexp(logits.masked_fill(~positives, neg_inf), 0)
    return 0.5 * (t2i.mean() + i2t.mean())


def text_features(encoder, heads: LiTHeads, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = encoder(input_ids=ids)
    pooled = F.normalize(heads.pooled(out.pooler_output), dim=-1)
    sequence = F.normalize(heads.sequence(out.last_hidden_state.mean(1)), dim=-1)
    return pooled, sequence


def train_text_encoder(run_dir: Path, steps: int = 1200, batch_size: int = 128, lr: float = 5e-4, seed: int = 0,
                       save_every: int = 100, short_length: int = 24, full_every: int = 4):
    """LiT: a CLIPTextModel trained contrastively against the frozen classifier trunk.

    Most steps use the first `short_length` positions (exact under the causal mask: every caption fits);
    every `full_every`-th step runs all 77 positions so that each position embedding is trained.
    """
    from hirm.minicanvas.tokenizer import load_tokenizer

    seed_everything(seed)
    tokenizer = load_tokenizer()
    encoder = make_text_encoder()
    heads = LiTHeads()
    clf = registry.load_classifier()
    for p in clf.parameters():
        p.requires_grad_(False)
    params = list(encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98), eps=1e-6)

    def step(i: int) -> dict[str, float]:
        b = world.render_batch(batch_size, seed=seed * 1_000_003 + 900_000 + i)
        length = 77 if i % full_every == 0 else short_length
        ids = tokenizer(b.captions, padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt")["input_ids"][:, :length]
        with torch.no_grad():
            img = clf.features(to_tensor(b.images))
        img = F.normalize(heads.image(img), dim=-1)
        pooled, sequence = text_features(encoder, heads, ids)
        pos = compatibility(b)
        scale = heads.log_scale.exp().clamp(max=100)
        loss_pooled = multi_positive_nce(scale * pooled @ img.T, pos)
        loss_seq = multi_positive_nce(scale * sequence @ img.T, pos)
        loss = loss_pooled + loss_seq
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return {"loss": float(loss.detach()), "pooled": float(loss_pooled.detach()),
                "seq": float(loss_seq.detach()), "len": length, "batch": batch_size}

    state = run_loop(run_dir, {"text_encoder": encoder, "heads": heads}, opt, steps, step, lr, save_every,
                     desc="text encoder", warmup=50)
    metrics = evaluate_text_encoder(encoder, heads, clf, tokenizer)
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, **asdict(state)}, indent=1))
    return encoder


@torch.no_grad()
def evaluate_text_encoder(encoder, heads: LiTHeads, clf, tokenizer, n_per_pair: int = 4,
                          seed: int = 555_555) -> dict:
    """Retrieval on held-out images: for each (object, style) caption of a fixed template, are the top-k
    images of that object / style?"""
    encoder.eval()
    b = world.render_every_pair(n_per_pair, seed)
    img = F.normalize(heads.image(clf.features(to_tensor(b.images))), dim=-1)
    objs_t, stys_t = torch.as_tensor(b.objects), torch.as_tensor(b.styles)
    out = {}
    for tname, template in (("eval", world.EVAL_TEMPLATES[0]), ("train", world.TEMPLATES[0])):
        captions, co, cs = [], [], []
        for o, obj in enumerate(world.OBJECTS):
            for s, sty in enumerate(world.STYLES):
                captions.append(template.format(object=obj, style=sty))
                co.append(o)
                cs.append(s)
        ids = tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
        pooled, sequence = text_features(encoder, heads, ids)
        for fname, feats in (("pooled", pooled), ("sequence", sequence)):
            top = (feats @ img.T).topk(n_per_pair, dim=1).indices
            out[f"{tname}_{fname}_top{n_per_pair}_object"] = float(
                (objs_t[top] == torch.as_tensor(co)[:, None]).float().mean())
            out[f"{tname}_{fname}_top{n_per_pair}_style"] = float(
                (stys_t[top] == torch.as_tensor(cs)[:, None]).float().mean())
            out[f"{tname}_{fname}_top{n_per_pair}_pair"] = float(
                ((objs_t[top] == torch.as_tensor(co)[:, None]) & (stys_t[top] == torch.as_tensor(cs)[:, None]))
                .float().mean())
    encoder.train()
    return out


# ------------------------------------------------------------------------------------------ mini-SD UNet


def make_unet(latent_channels: int = 8, cross_attention_dim: int = 256):
    from diffusers import UNet2DConditionModel

    # 8x8 latents -> 4x4 -> 2x2; cross-attention on the text at 8x8 and 4x4, as SD attends at its finer levels
    return UNet2DConditionModel(
        sample_size=8, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=(64, 128, 128), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=16,
    )


@torch.no_grad()
def encode_captions(encoder, tokenizer, captions: list[str], batch_size: int = 256) -> torch.Tensor:
    """[N, 77, d] fp16 last hidden states, as the SD pipeline conditions on them."""
    out = []
    for i in tqdm(range(0, len(captions), batch_size), desc="encode captions", mininterval=10):
        ids = tokenizer(captions[i : i + batch_size], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt")["input_ids"]
        out.append(encoder(input_ids=ids.to(encoder.device)).last_hidden_state.half().cpu())
    return torch.cat(out)


@torch.no_grad()
def prepare_generator_data(path: Path, vae, encoder, tokenizer, n: int, seed: int, workers: int = 1) -> None:
    """Render `n` captioned images once (over `workers` processes); store VAE latents and caption encodings
    (fp16) for training. The first n images of a larger set are the n-image set."""
    if path.exists():
        return
    chunks, captions, objects, styles = [], [], [], []
    gen = torch.Generator().manual_seed(seed)
    specs = _data_chunks(n, seed)
    for b in tqdm(world.render_batches(specs, workers), total=len(specs), desc="render + encode images",
                  mininterval=10):
        x = to_tensor(b.images).to(vae.device)
        chunks.append(vae.encode(x).latent_dist.sample(generator=gen).half().cpu().contiguous())
        captions += b.captions
        objects.append(torch.as_tensor(b.objects))
        styles.append(torch.as_tensor(b.styles))
    latents = torch.cat(chunks).contiguous()
    tensors = {
        "latents": latents,
        "text": encode_captions(encoder, tokenizer, captions).contiguous(),
        "empty": encode_captions(encoder, tokenizer, [""]),
        "objects": torch.cat(objects),
        "styles": torch.cat(styles),
    }
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"scaling_factor": str(float(1.0 / latents.float().std()))})


def _data_chunks(n: int, seed: int) -> list[tuple[int, int]]:
    """(size, seed) of each rendered chunk of a generator training set (shared by mini-SD and mini-Flux)."""
    return [(min(500, n - k), seed * 7919 + k) for k in range(0, n, 500)]


# where a checkout keeps each generator's committed resume state (raw weights + counters), relative to its root:
# training goes on across machines from there (`hirm minicanvas train/build --resume-state`); an installed
# package has no such folder, so the library functions take the path and default to none
RESUME_STATE = {"unet": Path("training/minicanvas-sd-unet"), "flux": Path("training/minicanvas-flux")}


def export_unet_resume_state(run_dir: Path, out: Path) -> Path:
    """The part of a UNet run worth committing to resume it elsewhere: raw weights in fp16 and the counters
    (the EMA weights are the shipped pipeline's UNet; Adam restarts with a short warm-up)."""
    from diffusers import UNet2DConditionModel

    ckpt = run_dir / "checkpoint"
    with atomic_dir(out, replace=True) as tmp:
        UNet2DConditionModel.from_pretrained(ckpt / "unet").half().save_pretrained(tmp / "unet")
        (tmp / "state.json").write_text((ckpt / "state.json").read_text())
    return out


def _init_from_export(run_dir: Path, init_from: Path, models: dict[str, nn.Module], ema_source: Path) -> None:
    """Seed an empty run dir's models from a committed export (see `export_unet_resume_state`)."""
    from diffusers import UNet2DConditionModel

    models["unet"].load_state_dict(UNet2DConditionModel.from_pretrained(init_from / "unet").float().state_dict())
    models["ema_unet"].load_state_dict(UNet2DConditionModel.from_pretrained(ema_source).float().state_dict())


def train_unet(run_dir: Path, steps: int = 40000, batch_size: int = 128, lr: float = 3e-4, seed: int = 0,
               n_images: int = 80000, caption_dropout: float = 0.1, ema_decay: float = 0.999,
               save_every: int = 250, components: Path | None = None, init_from: Path | None = None,
               device: str = "cpu", workers: int = 1, time_budget: float | None = None):
    """mini-SD: a UNet2DConditionModel on 8x8 VAE latents, conditioned on the frozen text encoder, with
    caption dropout for classifier-free guidance. Trains from a fixed rendered set (latents and caption
    encodings precomputed once: the text encoder would otherwise cost more than the UNet step).

    A fresh `run_dir` starts from the committed export in `init_from` when there is one, so training goes on
    across machines. `device`, `workers` (rendering processes) and `time_budget` are for leased accelerators."""
    from diffusers import AutoencoderKL
    from diffusers.training_utils import EMAModel
    from safetensors import safe_open
    from transformers import CLIPTextModel

    from hirm.minicanvas.tokenizer import load_tokenizer

    seed_everything(seed)
    components = components or run_dir.parent / "components"
    data_path = run_dir / "data.safetensors"
    if not data_path.exists():  # the VAE and text encoder only encode the rendered set, once
        # fp32 whatever the files hold: shipped components are fp16, and fp16 matmuls on CPU are much slower
        vae = AutoencoderKL.from_pretrained(components / "vae", torch_dtype=torch.float32).eval().to(device)
        encoder = CLIPTextModel.from_pretrained(components / "text_encoder", torch_dtype=torch.float32)
        prepare_generator_data(data_path, vae, encoder.eval().to(device), load_tokenizer(), n_images, seed, workers)
        del vae, encoder
    data = load_file(str(data_path), device=device)
    with safe_open(str(data_path), "pt") as f:
        scaling = float(f.metadata()["scaling_factor"])
    latents, text, empty = data["latents"], data["text"], data["empty"]
    unet = make_unet(latent_channels=latents.shape[1], cross_attention_dim=text.shape[-1])
    ema_unet = make_unet(latent_channels=latents.shape[1], cross_attention_dim=text.shape[-1])
    unet.to(device)
    ema_unet.to(device).load_state_dict(unet.state_dict())
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    models = {"unet": unet, "ema_unet": ema_unet}
    state = load_checkpoint(run_dir, models, opt)
    counters = run_dir / "checkpoint" / "state.json"
    if not state.step and init_from is not None and (init_from / "state.json").exists():

        _init_from_export(run_dir, init_from, models, registry.FOLDERS["minicanvas"] / "unet")
        counters = init_from / "state.json"
        raw = json.loads(counters.read_text())
        state = RunState(**{k: raw[k] for k in ("step", "seconds", "images_seen")})
    ema = EMAModel(ema_unet.parameters(), decay=ema_decay, use_ema_warmup=True, power=0.75)
    if state.step:
        ema.optimization_step = json.loads(counters.read_text())["ema_step"]
    scheduler = training_scheduler()
    alphas = scheduler.alphas_cumprod.to(device)

    def step(i: int) -> dict[str, float]:
        # every random draw from one CPU generator per step: the same stream on any device
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        idx = torch.randint(0, len(latents), (batch_size,), generator=g).to(device)
        x0 = latents[idx].float() * scaling
        cond = text[idx].float()
        drop = (torch.rand(batch_size, generator=g) < caption_dropout).to(device)
        cond[drop] = empty.float()
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=g).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        update(loss, unet, opt, ema)
        return {"loss": float(loss.detach()), "batch": batch_size}

    def sync_ema() -> dict:
        ema.copy_to(ema_unet.parameters())
        return {"ema_step": ema.optimization_step}

    state = run_loop(run_dir, {"unet": unet, "ema_unet": ema_unet}, opt, steps, step, lr, save_every,
                     desc="unet", before_save=sync_ema, warmup=200, state=state, time_budget=time_budget)
    (run_dir / "scaling_factor.txt").write_text(str(scaling))
    return unet, state


# ------------------------------------------------------------------------------------------ mini-Flux


@torch.no_grad()
def prepare_flux_data(path: Path, unet_data: Path, n_images: int, seed: int, workers: int = 1) -> None:
    """Pooled CLIP vectors and T5 token ids for the same rendered set as mini-SD's (whose latents and text
    states it reads: the pooled vector is the text state at the EOS token, as CLIPTextModel.pooler_output)."""
    from hirm.minicanvas import flux
    from hirm.minicanvas.tokenizer import load_tokenizer

    if path.exists():
        return
    clip_tok, t5_tok = load_tokenizer(), flux.make_t5_tokenizer()
    # the captions of prepare_generator_data, re-drawn from the same seeds
    captions = [c for b in world.render_batches(_data_chunks(n_images, seed), workers) for c in b.captions]
    data = load_file(str(unet_data))
    ids = clip_tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    eos = (ids == clip_tok.eos_token_id).int().argmax(-1)
    empty_ids = clip_tok([""], padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    empty_eos = int((empty_ids == clip_tok.eos_token_id).int().argmax(-1))

    def t5(texts: list[str]) -> torch.Tensor:
        return t5_tok(texts, padding="max_length", max_length=flux.T5_MAX_LENGTH, truncation=True,
                      return_tensors="pt")["input_ids"].int()

    tensors = {
        "pooled": data["text"][torch.arange(len(captions)), eos].contiguous(),
        "empty_pooled": data["empty"][0, empty_eos][None].contiguous(),
        "t5_ids": t5(captions),
        "empty_t5_ids": t5([""]),
    }
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp))


def export_flux_resume_state(run_dir: Path, out: Path) -> Path:
    """Raw (non-EMA) mini-Flux weights in fp16 and the counters, to resume training on another machine (the
    EMA weights are the shipped pipeline's; Adam restarts with a short warm-up)."""
    ckpt = run_dir / "checkpoint"
    with atomic_dir(out, replace=True) as tmp:
        save_file({k: v.half().contiguous() for k, v in load_file(str(ckpt / "flux.safetensors")).items()},
                  str(tmp / "flux.safetensors"))
        (tmp / "state.json").write_text((ckpt / "state.json").read_text())
    return out


def train_flux(run_dir: Path, steps: int = 6000, batch_size: int = 64, lr: float = 3e-4, seed: int = 0,
               caption_dropout: float = 0.1, sequence_dropout: float = 0.0, pooled_dropout: float = 0.0,
               ema_decay: float = 0.999, save_every: int = 250, unet_run: Path | None = None,
               init_from: Path | None = None, device: str = "cpu", workers: int = 1,
               time_budget: float | None = None):
    """mini-Flux: FluxTransformer2DModel + T5 encoder, rectified flow on the mini-SD training set.

    `caption_dropout` drops both conditionings (for true CFG); `sequence_dropout` / `pooled_dropout` drop
    only the T5 sequence / the pooled CLIP vector, shifting how much the model leans on each pathway. A fresh
    `run_dir` starts from the committed export in `init_from` (and the shipped EMA weights) when there is one.
    `device`, `workers` (rendering processes) and `time_budget` are for leased accelerators."""
    from diffusers.training_utils import EMAModel
    from safetensors import safe_open

    from hirm.minicanvas import flux

    seed_everything(seed)
    unet_run = unet_run or run_dir.parent / "unet"
    unet_data = unet_run / "data.safetensors"
    if not unet_data.exists():
        raise FileNotFoundError(f"{unet_data}: mini-Flux trains on mini-SD's rendered set; prepare it first")
    with safe_open(str(unet_data), "pt") as f:
        scaling = float(f.metadata()["scaling_factor"])
        latents = f.get_tensor("latents").to(device)
    prepare_flux_data(run_dir / "data.safetensors", unet_data, len(latents), seed, workers)
    data = load_file(str(run_dir / "data.safetensors"), device=device)
    vocab = len(flux.make_t5_tokenizer())
    model = flux.FluxTrainer(vocab, latent_channels=latents.shape[1], pooled_dim=data["pooled"].shape[-1])
    ema_model = flux.FluxTrainer(vocab, latent_channels=latents.shape[1], pooled_dim=data["pooled"].shape[-1])
    model.to(device)
    ema_model.to(device).load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    models = {"flux": model, "ema_flux": ema_model}
    state = load_checkpoint(run_dir, models, opt)
    counters = run_dir / "checkpoint" / "state.json"
    if not state.step and init_from is not None and (init_from / "state.json").exists():

        load_model(model, str(init_from / "flux.safetensors"), strict=True)
        shipped = registry.FOLDERS["minicanvas-flux"]
        ema_model.transformer.load_state_dict(type(ema_model.transformer).from_pretrained(
            shipped / "transformer", torch_dtype=torch.float32).state_dict())
        ema_model.t5.load_state_dict(type(ema_model.t5).from_pretrained(
            shipped / "text_encoder_2", dtype=torch.float32).state_dict())
        counters = init_from / "state.json"
        raw = json.loads(counters.read_text())
        state = RunState(**{k: raw[k] for k in ("step", "seconds", "images_seen")})
    ema = EMAModel(ema_model.parameters(), decay=ema_decay, use_ema_warmup=True, power=0.75)
    if state.step:
        ema.optimization_step = json.loads(counters.read_text())["ema_step"]

    def step(i: int) -> dict[str, float]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        idx = torch.randint(0, len(latents), (batch_size,), generator=g).to(device)
        x0 = latents[idx].float() * scaling
        pooled = data["pooled"][idx].float()
        ids = data["t5_ids"][idx].long()
        r = torch.rand(batch_size, generator=g)
        drop_all = r < caption_dropout
        drop_seq = drop_all | ((r >= caption_dropout) & (torch.rand(batch_size, generator=g) < sequence_dropout))
        drop_pool = drop_all | ((r >= caption_dropout) & (torch.rand(batch_size, generator=g) < pooled_dropout))
        drop_seq, drop_pool = drop_seq.to(device), drop_pool.to(device)
        ids[drop_seq] = data["empty_t5_ids"].long()
        pooled[drop_pool] = data["empty_pooled"].float()
        loss = flux.flow_matching_loss(model, x0, pooled, ids, g)
        update(loss, model, opt, ema)
        return {"loss": float(loss.detach()), "batch": batch_size}

    def sync_ema() -> dict:
        ema.copy_to(ema_model.parameters())
        return {"ema_step": ema.optimization_step, "scaling_factor": scaling,
                "sequence_dropout": sequence_dropout, "pooled_dropout": pooled_dropout}

    return run_loop(run_dir, models, opt, steps, step, lr, save_every, desc="flux", before_save=sync_ema,
                    warmup=200, state=state, time_budget=time_budget)


def generator_pipeline(components: Path, unet, scaling_factor: float):
    """An in-memory mini-SD pipeline around a UNet being trained (for progress evaluation)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextModel

    from hirm.minicanvas.tokenizer import load_tokenizer

    vae = AutoencoderKL.from_pretrained(components / "vae", torch_dtype=torch.float32)
    vae.register_to_config(scaling_factor=scaling_factor)
    encoder = CLIPTextModel.from_pretrained(components / "text_encoder", torch_dtype=torch.float32)
    return StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=encoder.eval(),
        tokenizer=load_tokenizer(), unet=unet.eval(), scheduler=inference_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


# what `hirm minicanvas train WHAT` runs; a trainer's options are its keyword arguments
TRAINERS: Registry[Entry] = Registry("trainer", [
    Entry("classifier", None, train_classifier, "the judge: object and style heads on rendered images"),
    Entry("vae", None, train_vae, "mini-SD's AutoencoderKL on rendered images"),
    Entry("vae-decoder", None, train_vae_decoder, "the VAE's decoder alone (its latent space kept)"),
    Entry("text", None, train_text_encoder, "the CLIPTextModel, trained contrastively against the frozen judge (LiT)"),
    Entry("unet", None, train_unet, "mini-SD's UNet2DConditionModel on 8x8 VAE latents"),
    Entry("flux", None, train_flux, "mini-Flux: FluxTransformer2DModel + T5, rectified flow"),
])
