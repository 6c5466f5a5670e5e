"""AdvUnlearn (Zhang et al., NeurIPS 2024): adversarial training of the text encoder.

Each step first attacks: a few prefix token embeddings, prepended to the concept prompt, are optimised by
signed-gradient steps so that the erased model's noise prediction reproduces the original model's
prediction for the concept. Then it unlearns on that adversarial prompt with ESD's negatively guided target,
plus a retain term that keeps the noise predictions of unrelated prompts where they were. Only the text
encoder is trained (the paper's finding: an adversarially unlearned encoder is a plug-in for other models),
which makes it the closest rival to HiRM in where it edits.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from hirm.encoders import find_text_encoders
from hirm.erase.denoiser import partly_denoised, require_unet_pipeline
from hirm.erase.loop import OptimConfig, optimise
from hirm.erase.prompts import default_retain_prompts
from hirm.erase.textenc import trainable_parameter_names
from hirm.errors import HirmError
from hirm.patch import SEP, Patch, fingerprint
from hirm.registry import option
from hirm.tokens import embeddings_at, frozen, positions


@dataclass
class AdvUnlearnConfig:
    steps: int = option(1000, "iterations, one latent each")
    lr: float = option(1e-5, "learning rate")
    layers: str = option("all", "text-encoder layers trained (a preset or layer indices)")
    negative_guidance: float = option(1.0, "eta of the ESD target")
    start_guidance: float = option(3.0, "CFG scale used to draw z_t")
    ddim_steps: int = option(50, "DDIM steps of the schedule z_t is drawn on")
    prefix_tokens: int = option(1, "adversarial tokens prepended to the prompt")
    attack_steps: int = option(30, "attack steps per iteration")
    attack_step_size: float = option(1e-3, "signed-gradient step on the token embeddings")
    retain_weight: float = option(1.0, "weight of the retain term")
    retain_prompts: tuple[str, ...] = option((), "retain prompts (empty: the model's own unrelated captions, or an "
                                                 "everyday set)")
    retain_batch: int = option(4, "retain prompts per iteration")
    seed: int = option(42, "seed of the latents, attacks and the optimisation")

    def validate(self) -> None:
        if self.steps < 1 or self.attack_steps < 0 or self.prefix_tokens < 1:
            raise HirmError("advunlearn needs steps >= 1, attack_steps >= 0 and prefix_tokens >= 1")
        if not self.lr > 0:
            raise HirmError(f"--lr {self.lr}: need a positive learning rate")


def erase_advunlearn(pipe, concept: str, config: AdvUnlearnConfig, progress: bool = True) -> Patch:
    config.validate()
    require_unet_pipeline(pipe, "advunlearn")
    (enc,) = find_text_encoders(pipe, which="text_encoder")
    unet = pipe.unet
    names = trainable_parameter_names(enc, config.layers)
    retain = list(config.retain_prompts or default_retain_prompts([enc], [concept]))
    rng = random.Random(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    k = config.prefix_tokens
    # the adversarial prompt reserves k placeholder tokens after the start token; their embeddings are attacked
    adv_ids = enc.tokenize([" ".join(["x"] * k) + " " + concept], truncate=True)
    concept_ids, uncond_ids = enc.tokenize([concept]), enc.tokenize([""])
    table = enc.model.get_input_embeddings().weight
    with torch.no_grad():
        cond0, uncond0 = enc.model(input_ids=concept_ids)[0], enc.model(input_ids=uncond_ids)[0]
        retain0 = enc.model(input_ids=enc.tokenize(retain, truncate=True))[0]

    def attack(z: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        delta = table[torch.randint(0, table.shape[0], (k,), generator=gen)].detach().clone()
        for _ in range(config.attack_steps):
            delta.requires_grad_(True)
            with embeddings_at(enc.model, positions(1, len(delta)), delta):
                h = enc.model(input_ids=adv_ids)[0]
            loss = F.mse_loss(unet(z, t, encoder_hidden_states=h).sample, target)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta - config.attack_step_size * grad.sign()).detach()
        return delta

    def loss_fn(step: int) -> torch.Tensor:
        z, t = partly_denoised(pipe, unet, cond0, uncond0, config.ddim_steps, config.start_guidance, gen)
        with torch.no_grad():
            e0 = unet(z, t, encoder_hidden_states=uncond0).sample
            ep = unet(z, t, encoder_hidden_states=cond0).sample
        delta = attack(z, t, ep)
        with embeddings_at(enc.model, positions(1, len(delta)), delta):
            h = enc.model(input_ids=adv_ids)[0]
        loss = F.mse_loss(unet(z, t, encoder_hidden_states=h).sample, e0 - config.negative_guidance * (ep - e0))
        if config.retain_weight > 0:
            idx = rng.sample(range(len(retain)), min(config.retain_batch, len(retain)))
            kept = enc.model(input_ids=enc.tokenize([retain[i] for i in idx], truncate=True))[0]
            zr = z.expand(len(idx), -1, -1, -1)
            with torch.no_grad():
                er = unet(zr, t, encoder_hidden_states=retain0[idx]).sample
            loss = loss + config.retain_weight * F.mse_loss(unet(zr, t, encoder_hidden_states=kept).sample, er)
        return loss

    torch.manual_seed(config.seed)
    with frozen(unet):  # gradients flow through the UNet to the encoder, never into it
        result = optimise(enc.model, names, loss_fn, OptimConfig(config.steps, config.lr, (0.9, 0.999), 1e-8, 0.0),
                          desc=f"advunlearn {enc.name}", progress=progress)
    return Patch(tensors={f"{enc.name}{SEP}{n}": t.contiguous() for n, t in result.tensors.items()},
                 concepts=[concept], method="advunlearn", config={**asdict(config), "retain_prompts": retain},
                 fingerprints={enc.name: fingerprint(enc.model)},
                 info={enc.name: {"loss_first": result.losses[0], "loss_last": result.losses[-1]}},
                 seconds={enc.name: result.seconds})
