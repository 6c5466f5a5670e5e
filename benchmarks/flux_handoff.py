"""Where a distilled mini-Flux falls short of its teacher: sample the 120-cell grid with mini-SD's UNet as the
velocity field on some flow times and mini-Flux on the rest, and judge each mix.

    python benchmarks/flux_handoff.py runs/flux-distill/checkpoint/ema_flux.safetensors 0:0 0:1.01 0:0.5 0.5:1.01

Each RANGE `lo:hi` gives the teacher the steps whose flow time t (1 = noise, 0 = image) lies in [lo, hi);
`0:0` is mini-Flux alone, `0:1.01` the teacher alone. The sampler is FluxPipeline's (25 Euler steps on linear
sigmas, true CFG 5), written out so that the field can change between steps; the teacher's velocity is
`flux.TeacherVelocity`'s (its nearest timestep, clamped to its range). Where the teacher's share lifts accuracy
most is where mini-Flux's field is wrong.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import FluxPipeline

from hirm.minicanvas import flux, registry, world
from hirm.minicanvas.build import flux_pipeline, training_scheduler
from hirm.minicanvas.classifier import classify_images


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint", type=Path, help="a FluxTrainer checkpoint (a run's ema_flux.safetensors)")
    p.add_argument("ranges", nargs="+", help="lo:hi flow-time ranges sampled by the teacher")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=registry.SAMPLING["steps"])
    p.add_argument("--guidance", type=float, default=registry.SAMPLING["guidance"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    student = flux_pipeline(args.checkpoint)
    sd = registry.load_pipeline("minicanvas")
    teacher = flux.TeacherVelocity(sd.unet.float(), training_scheduler().alphas_cumprod)
    classifier = registry.load_classifier()
    cells = [(o, s) for o in range(len(world.OBJECTS)) for s in range(len(world.STYLES))]
    template = world.EVAL_TEMPLATES[0]  # the grid's prompt, as benchmarks/flux_quality.py samples it
    prompts = [template.format(object=world.OBJECTS[o], style=world.STYLES[s]) for o, s in cells]
    n, size = len(prompts), sd.unet.config.sample_size
    seeds = [int(s) for s in args.seeds.split(",")]
    with torch.no_grad():
        text = sd.encode_prompt(prompts, "cpu", 1, True, negative_prompt=[""] * n)  # (cond, uncond)
        seq = [student.encode_prompt(q, q, device="cpu", max_sequence_length=flux.T5_MAX_LENGTH)[:2]
               for q in (prompts, [""] * n)]
        img_ids = flux.image_ids(size, size)

        def student_velocity(x: torch.Tensor, t: torch.Tensor, branch: int) -> torch.Tensor:
            embeds, pooled = seq[branch]
            v = student.transformer(hidden_states=flux.pack(x), timestep=t, pooled_projections=pooled,
                                    encoder_hidden_states=embeds, txt_ids=embeds.new_zeros(embeds.shape[1], 3),
                                    img_ids=img_ids, return_dict=False)[0]
            return FluxPipeline._unpack_latents(v, size, size, 1)

        for spec in args.ranges:
            lo, hi = (float(v) for v in spec.split(":"))

            def field(x: torch.Tensor, t: torch.Tensor, lo: float = lo, hi: float = hi):
                if lo <= float(t[0]) < hi:
                    k, _ = teacher.snap(t.clamp(max=float(teacher.times[-1])))
                    return tuple(teacher(x, k, c) for c in text)
                return tuple(student_velocity(x, t, b) for b in (0, 1))

            objects, styles, per = judge_flow(field, sd, classifier, cells, seeds, args.steps, args.guidance)
            print(f"teacher on [{lo}, {hi}): object {objects:.3f} style {styles:.3f}  {per}", flush=True)


def judge_flow(field, sd, classifier, cells: list[tuple[int, int]], seeds: list[int], steps: int,
               guidance: float) -> tuple[float, float, dict[str, float]]:
    """FluxPipeline's sampler written out (Euler on linear sigmas, true CFG) with `field(x, t)` -> (cond, uncond)
    velocities on mini-SD's latents, decoded by its VAE and judged: object and style accuracy over the cells
    (object, style) x seeds, and the object accuracy per object."""
    n, size = len(cells), sd.unet.config.sample_size
    sigmas = np.append(np.linspace(1.0, 1 / steps, steps), 0.0)
    objects, styles = [], []
    for seed in seeds:
        x = torch.randn(n, sd.unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(seed))
        for i in range(steps):
            cond, uncond = field(x, torch.full((n,), float(sigmas[i])))
            x = x + float(sigmas[i + 1] - sigmas[i]) * (uncond + guidance * (cond - uncond))
        images = sd.image_processor.postprocess(sd.vae.decode(x / sd.vae.config.scaling_factor).sample,
                                                 output_type="pil")
        pred = classify_images(classifier, images)
        objects.append(pred["object"])
        styles.append(pred["style"])
    truth_o = np.tile([c[0] for c in cells], len(seeds))
    truth_s = np.tile([c[1] for c in cells], len(seeds))
    ok = np.concatenate(objects) == truth_o
    per = {world.OBJECTS[o]: round(float(ok[truth_o == o].mean()), 2) for o in range(len(world.OBJECTS))}
    return float(ok.mean()), float((np.concatenate(styles) == truth_s).mean()), per

if __name__ == "__main__":
    main()
