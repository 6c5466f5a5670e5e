"""mini-Flux: a Flux-architecture generator for MiniCanvas (`FluxPipeline`-loadable).

Conditioned exactly like Flux: a pooled vector from the SAME frozen CLIP-style text encoder as mini-SD (its EOS
token, `pooler_output`) and a token sequence from a second, T5 encoder (trained with the transformer here). The
split between the two pathways is what decides whether a patch made on the CLIP encoder transfers: trained
with `sequence_dropout` > 0 the transformer learns to draw from the pooled vector alone too.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from hirm.minicanvas import registry, world

T5_MAX_LENGTH = 24  # world captions are at most 19 T5 tokens; every token costs training time


def _caption_text() -> str:
    return re.sub(r"\{[a-z]+\}", " ", " ".join([
        *world.TEMPLATES, *world.PARTIAL_TEMPLATES, *world.EVAL_TEMPLATES, *world.OBJECTS, *world.STYLES,
        *(s for v in world.OBJECT_SYNONYMS.values() for s in v), *(s for v in world.STYLE_SYNONYMS.values() for s in v),
        *world.OBJECT_GROUPS.values(), *world.COLOURS, *world.BACKGROUNDS, *world.SIZES,
        world.STYLE_SUPERCATEGORY, world.SHAPE_SUPERCATEGORY,
    ]).lower())


def caption_words() -> list[str]:
    """Every word a world caption can use (templates, names, synonyms, attributes, super-categories) and its
    punctuation, in the order that fixes the T5 token ids."""
    return sorted(set(re.findall(r"[a-z0-9]+|[^\sa-z0-9]", _caption_text())))


def make_t5_tokenizer():
    """A T5 tokenizer (Unigram over "▁"-prefixed pieces, as sentencepiece's) over the world's vocabulary, built
    in code from a piece list: no sentencepiece file needed, and it reloads with `T5TokenizerFast`.

    One piece per caption word: "▁word" where the word starts a whitespace-separated chunk, bare "word" where it
    follows punctuation ("polka-dot" -> "▁polka", "-", "dot"); punctuation is bare. A word used both ways gets
    its bare piece after all the others. Words outside the world become <unk>."""
    from transformers import T5TokenizerFast

    text = _caption_text()
    starts = set(re.findall(r"(?:^|\s)([a-z0-9]+)", text))
    after_punctuation = set(re.findall(r"[^\sa-z0-9]([a-z0-9]+)", text))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"\u2581{w}" if w in starts else w, -1.0) for w in caption_words()]
    pieces += [(w, -1.0) for w in sorted(after_punctuation & starts)]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def make_t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=vocab_size, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=16, dropout_rate=0.0, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1, feed_forward_proj="gated-gelu",
                   **{registry.FAMILY_KEY: registry.FAMILY})
    return T5EncoderModel(cfg)


def make_transformer(latent_channels: int = 8, pooled_dim: int = 256, sequence_dim: int = 128):
    from diffusers import FluxTransformer2DModel

    # Flux packs 2x2 latent patches into tokens: 8x8x8 latents -> 16 tokens of 32 values
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=2, num_single_layers=4, attention_head_dim=32,
        num_attention_heads=4, joint_attention_dim=sequence_dim, pooled_projection_dim=pooled_dim,
        guidance_embeds=False, axes_dims_rope=(8, 12, 12),
    )


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C], as FluxPipeline._pack_latents."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def image_ids(h: int, w: int) -> torch.Tensor:
    """Positional ids of the packed latent tokens, as FluxPipeline._prepare_latent_image_ids."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


class FluxTrainer(nn.Module):
    """The trained parts of mini-Flux: the transformer and the T5 encoder."""

    def __init__(self, vocab_size: int, latent_channels: int = 8, pooled_dim: int = 256):
        super().__init__()
        self.t5 = make_t5_encoder(vocab_size)
        self.transformer = make_transformer(latent_channels, pooled_dim, self.t5.config.d_model)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, pooled: torch.Tensor, t5_ids: torch.Tensor,
                 h: int, w: int) -> torch.Tensor:
        seq = self.t5(input_ids=t5_ids).last_hidden_state
        return self.transformer(
            hidden_states=x_t, timestep=t, pooled_projections=pooled, encoder_hidden_states=seq,
            txt_ids=seq.new_zeros(seq.shape[1], 3), img_ids=image_ids(h, w).to(x_t.device), return_dict=False,
        )[0]


class TeacherVelocity:
    """Velocity targets from an epsilon-prediction denoiser on a DDPM schedule (mini-SD's UNet): distillation.

    The flow state x_t = (1 - t) x0 + t noise is, divided by sqrt((1 - t)^2 + t^2), the DDPM state of the
    timestep whose alpha_bar is (1 - t)^2 / ((1 - t)^2 + t^2); the teacher's noise estimate there gives the
    velocity noise - x0 = (noise - x_t) / (1 - t). That is the conditional mean the data target (one noise, one
    image) only estimates, so the student regresses on a target without the data target's sampling noise."""

    def __init__(self, unet, alphas_cumprod: torch.Tensor):
        self.unet = unet.eval().requires_grad_(False)
        ab = alphas_cumprod.double()
        self.times = (1 / (1 + (ab / (1 - ab)).sqrt())).float()  # flow time of each DDPM timestep, increasing

    def snap(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher timestep nearest each flow time, and whether the time lies inside the teacher's range."""
        times = self.times.to(t.device)
        inside = (t >= times[0]) & (t <= times[-1])
        hi = torch.searchsorted(times, t).clamp(1, len(times) - 1)
        lo = hi - 1
        k = torch.where((t - times[lo]).abs() <= (times[hi] - t).abs(), lo, hi)
        return k, inside

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, k: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        t = self.times.to(x_t.device)[k].view(-1, 1, 1, 1)
        eps = self.unet(x_t / ((1 - t) ** 2 + t**2).sqrt(), k, encoder_hidden_states=text).sample
        return (eps - x_t) / (1 - t)


def flow_matching_loss(model: FluxTrainer, x0: torch.Tensor, pooled: torch.Tensor, t5_ids: torch.Tensor,
                       generator: torch.Generator, teacher: TeacherVelocity | None = None,
                       teacher_text: torch.Tensor | None = None, distill: float = 1.0) -> torch.Tensor:
    """Rectified flow (as Flux): x_t = (1 - t) x0 + t noise, predict the velocity noise - x0.
    Timesteps from a logit-normal, the SD3/Flux choice.

    With a `teacher` (conditioned on `teacher_text`), flow times inside its schedule snap to its nearest
    timestep and the target there is `distill` x the teacher's velocity + (1 - distill) x the data's."""
    b, _, h, w = x0.shape
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)  # CPU draws: the same on any device
    t = torch.sigmoid(torch.randn(b, generator=generator)).to(x0.device)
    if teacher is not None:
        k, inside = teacher.snap(t)
        t = torch.where(inside, teacher.times.to(t.device)[k], t)
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    target = noise - x0
    if teacher is not None and inside.any():
        taught = teacher(x_t[inside], k[inside], teacher_text[inside])
        target = target.clone()
        target[inside] = distill * taught + (1 - distill) * target[inside]
    pred = model.velocity(pack(x_t), t, pooled, t5_ids, h, w)
    return F.mse_loss(pred, pack(target))
