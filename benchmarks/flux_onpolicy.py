"""Screen: on-policy distillation of mini-Flux from mini-SD, with a loss on the guided velocity.

From the committed resume state (training/minicanvas-flux): every `--refresh` steps, roll out `--rollout` captions
with the current EMA student (25 Euler steps on linear sigmas, true CFG 5: what the evaluation samples), keep every
state, and label each with the teacher's conditional and unconditional velocity (`flux.TeacherVelocity`, clamped
to its range as flux_handoff.py does). A step: `--on` of those states, both branches, loss = cond MSE + uncond MSE
+ `--gw` x MSE of the guided velocity (uncond + 5 (cond - uncond)); plus `--off` forward-noised data pairs with the
teacher's target (the trainer's loss), so that the field stays right off the student's own paths.

    python benchmarks/flux_onpolicy.py runs/op-a 1500     # then: python benchmarks/flux_quality.py runs/op-a

Needs mini-SD's rendered set (runs/unet/data.safetensors) and mini-Flux's (runs/flux-data/data.safetensors), as
`hirm minicanvas train flux` prepares them. Writes OUT/checkpoint/{ema_flux,flux}.safetensors and state.json, the
layout benchmarks/flux_quality.py reads. The logged losses are on fresh rollouts, so they measure the student's
error where it samples.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FluxPipeline, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_model

from hirm.compat import diffusers_dtype
from hirm.minicanvas import flux, registry
from hirm.minicanvas.build import training_scheduler

SIZE, STEPS = 8, 25  # mini-SD's latent side; the evaluation's Euler steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("seconds", type=float)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--gw", type=float, default=1.0, help="weight of the guided-velocity loss")
    p.add_argument("--on", type=int, default=32, help="rollout states per step")
    p.add_argument("--off", type=int, default=32, help="forward-noised data pairs per step")
    p.add_argument("--rollout", type=int, default=64, help="captions per rollout")
    p.add_argument("--refresh", type=int, default=50, help="steps between rollouts")
    p.add_argument("--decay", type=float, default=0.998, help="EMA decay")
    p.add_argument("--guidance", type=float, default=5.0)
    a = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    with safe_open("runs/unet/data.safetensors", "pt") as f:
        scaling = float(f.metadata()["scaling_factor"])
        latents, text, empty_text = f.get_tensor("latents"), f.get_tensor("text"), f.get_tensor("empty")
    data = load_file("runs/flux-data/data.safetensors")
    vocab = len(flux.make_t5_tokenizer())
    model, ema = flux.FluxTrainer(vocab), flux.FluxTrainer(vocab)
    load_model(model, "training/minicanvas-flux/flux.safetensors")
    load_model(ema, "training/minicanvas-flux/ema_flux.safetensors")
    ema.requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(registry.FOLDERS["minicanvas"] / "unet",
                                                **diffusers_dtype(torch.float32))
    teacher = flux.TeacherVelocity(unet, training_scheduler().alphas_cumprod)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    sigmas = np.append(np.linspace(1.0, 1 / STEPS, STEPS), 0.0)
    img_ids = flux.image_ids(SIZE, SIZE)
    empty_pooled, empty_ids = data["empty_pooled"].float(), data["empty_t5_ids"].long()

    def sequence(m, ids):
        """T5 states of the captions, then of as many empty prompts."""
        return m.t5(input_ids=torch.cat([ids, empty_ids.expand(len(ids), -1)])).last_hidden_state

    def branches(m, x, t, pooled, seq):
        """Conditional and unconditional velocity ([B, C, H, W] each) in one batched call."""
        n = len(x)
        v = m.transformer(hidden_states=flux.pack(torch.cat([x, x])), timestep=torch.cat([t, t]),
                          pooled_projections=torch.cat([pooled, empty_pooled.expand(n, -1)]),
                          encoder_hidden_states=seq, txt_ids=seq.new_zeros(seq.shape[1], 3), img_ids=img_ids,
                          return_dict=False)[0]
        v = FluxPipeline._unpack_latents(v, SIZE, SIZE, 1)
        return v[:n], v[n:]

    @torch.no_grad()
    def rollout(n: int):
        idx = torch.randint(0, len(latents), (n,), generator=g)
        pooled, ids = data["pooled"][idx].float(), data["t5_ids"][idx].long()
        x = torch.randn(n, latents.shape[1], SIZE, SIZE, generator=g)
        seq = sequence(ema, ids)  # the same for every step
        states, times = [], []
        for i in range(STEPS):
            t = torch.full((n,), float(sigmas[i]))
            states.append(x)
            times.append(t)
            c, u = branches(ema, x, t, pooled, seq)
            x = x + float(sigmas[i + 1] - sigmas[i]) * (u + a.guidance * (c - u))
        x, t, rep = torch.cat(states), torch.cat(times), idx.repeat(STEPS)
        k, _ = teacher.snap(t.clamp(max=float(teacher.times[-1])))
        chunks = [slice(s, s + 256) for s in range(0, len(x), 256)]
        tc = torch.cat([teacher(x[c], k[c], text[rep[c]].float()) for c in chunks])
        tu = torch.cat([teacher(x[c], k[c], empty_text.float().expand(len(x[c]), -1, -1)) for c in chunks])
        return x, t, rep, tc, tu

    start, step, log = time.perf_counter(), 0, []
    while time.perf_counter() - start < a.seconds:
        if step % a.refresh == 0:
            x, t, rep, tc, tu = rollout(a.rollout)
            order, cursor = torch.randperm(len(x), generator=g), 0
        j = order[cursor:cursor + a.on]
        cursor = (cursor + a.on) % len(order)
        c, u = branches(model, x[j], t[j], data["pooled"][rep[j]].float(),
                        sequence(model, data["t5_ids"][rep[j]].long()))
        on_loss = F.mse_loss(c, tc[j]) + F.mse_loss(u, tu[j])
        guided_loss = F.mse_loss(u + a.guidance * (c - u), tu[j] + a.guidance * (tc[j] - tu[j]))
        loss = on_loss + a.gw * guided_loss
        if a.off:
            idx = torch.randint(0, len(latents), (a.off,), generator=g)
            cond = text[idx].float()
            pooled, ids = data["pooled"][idx].float(), data["t5_ids"][idx].long()
            drop = torch.rand(a.off, generator=g) < 0.1  # the trainer's caption dropout
            cond[drop], pooled[drop], ids[drop] = empty_text.float(), empty_pooled, empty_ids
            loss = loss + flux.flow_matching_loss(model, latents[idx].float() * scaling, pooled, ids, g, teacher,
                                                  cond, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - a.decay)
        step += 1
        log.append((float(on_loss.detach()), float(guided_loss.detach()), float(loss.detach())))
        if step % 50 == 0 or step == 1:
            m = np.mean(log[-50:], axis=0)
            print(json.dumps({"step": step, "s": round(time.perf_counter() - start), "branches": round(m[0], 4),
                              "guided": round(m[1], 4), "loss": round(m[2], 4)}), flush=True)

    ckpt = a.out / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    save_model(ema, str(ckpt / "ema_flux.safetensors"))
    save_model(model, str(ckpt / "flux.safetensors"))
    (ckpt / "state.json").write_text(json.dumps({"step": step, "images_seen": step * (a.on + a.off),
                                                 "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
