"""The CLIPTextModel, trained contrastively against the frozen judge (LiT)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hirm.minicanvas import registry, world
from hirm.minicanvas.classifier import to_tensor
from hirm.minicanvas.tokenizer import load_tokenizer
from hirm.minicanvas.train.loop import (
    run_loop,
    seed_everything,
)


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
