"""mini-SD's AutoencoderKL, and its decoder alone (the latent space kept)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from hirm.compat import diffusers_dtype
from hirm.minicanvas import registry, world
from hirm.minicanvas.classifier import to_tensor
from hirm.minicanvas.train.loop import (
    run_loop,
    seed_everything,
)


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
    vae = AutoencoderKL.from_pretrained(init or registry.FOLDERS["minicanvas"] / "vae",
                                        **diffusers_dtype(torch.float32))
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
