"""ESD, Erased Stable Diffusion (Gandikota et al., ICCV 2023).

Fine-tune denoiser weights so that the conditional prediction for the concept becomes the frozen model's
prediction *guided away* from it: e_theta(z_t, c) -> e*(z_t) - eta (e*(z_t, c) - e*(z_t)), on latents z_t
that the model being trained draws part-way from noise. ESD-x trains cross-attention (concept-specific,
for styles), ESD-u everything else (broad, for objects and nudity). Defaults are the authors' script's.
On a Flux pipeline the same loss applies to the transformer's velocity predictions (flow matching), with
the joint attention of its double-stream blocks as the cross-attention (`denoiser.transformer_parameter_names`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from hirm.erase.denoiser import GROUPS, denoiser
from hirm.erase.loop import OptimConfig, optimise, temporarily
from hirm.errors import HirmError
from hirm.patch import SEP, Patch, fingerprint
from hirm.registry import option


@dataclass
class ESDConfig:
    train: str = option("xattn", "UNet tensors trained: xattn (ESD-x), noxattn (ESD-u), selfattn or full")
    steps: int = option(1000, "iterations, one latent each")
    lr: float = option(1e-5, "learning rate")
    negative_guidance: float = option(1.0, "eta: how far the target is pushed from the concept's noise estimate")
    start_guidance: float = option(3.0, "CFG scale used to draw z_t")
    ddim_steps: int = option(50, "DDIM steps of the schedule z_t is drawn on")
    seed: int = option(42, "seed of the latents, timesteps and the optimisation")

    def validate(self) -> None:
        if self.train not in GROUPS:
            raise HirmError(f"ESD train {self.train!r}: use one of {', '.join(GROUPS)}")
        if self.steps < 1 or self.ddim_steps < 1:
            raise HirmError("ESD needs --steps >= 1 and ddim_steps >= 1")
        if not self.lr > 0:
            raise HirmError(f"--lr {self.lr}: need a positive learning rate")


def erase_esd(pipe, concept: str, config: ESDConfig, progress: bool = True) -> Patch:
    config.validate()
    method = "esd-x" if config.train == "xattn" else "esd-u" if config.train == "noxattn" else f"esd-{config.train}"
    den = denoiser(pipe, method)
    model = den.module
    names = den.parameter_names(config.train)
    cond, uncond = den.condition([concept]), den.condition([""])
    params = dict(model.named_parameters())
    frozen = {n: params[n].detach().clone() for n in names}  # optimise trains `names` in place
    gen = torch.Generator().manual_seed(config.seed)

    def loss_fn(step: int) -> torch.Tensor:
        z, t = den.partly_denoised(cond, uncond, config.ddim_steps, config.start_guidance, gen)
        with torch.no_grad(), temporarily(model, frozen):  # the frozen model's predictions
            e0 = den.predict(z, t, uncond)
            ep = den.predict(z, t, cond)
        en = den.predict(z, t, cond)
        return F.mse_loss(en, e0 - config.negative_guidance * (ep - e0))

    torch.manual_seed(config.seed)
    result = optimise(model, names, loss_fn, OptimConfig(config.steps, config.lr, (0.9, 0.999), 1e-8, 0.0),
                      desc=f"{method} {den.name}", progress=progress)
    return Patch(tensors={f"{den.name}{SEP}{n}": t.contiguous() for n, t in result.tensors.items()},
                 concepts=[concept], method=method, config=asdict(config),
                 fingerprints={den.name: fingerprint(model)},
                 info={den.name: {"loss_first": result.losses[0], "loss_last": result.losses[-1]}},
                 seconds={den.name: result.seconds})
