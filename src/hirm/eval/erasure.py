"""`hirm eval` and `hirm demo` on MiniCanvas: run the evaluation, print tables, write grids and reports."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hirm import api
from hirm.encoders import find_text_encoders, load_pipeline
from hirm.errors import HirmError
from hirm.eval.locality import locality_probe
from hirm.eval.minicanvas import evaluate, score_concepts
from hirm.generate import sample
from hirm.images import grid as image_grid
from hirm.images import save_atomic, write_text_atomic
from hirm.minicanvas import registry, world
from hirm.minicanvas.world import concept_domain

METRICS = ("ua", "ira", "cra")
logger = logging.getLogger(__name__)


def probe_prompts(concept: str, per_template: int = 3) -> tuple[list[str], list[str]]:
    """IN: captions naming `concept`; OUT: the same captions naming the other concepts of its domain."""
    domain, _ = concept_domain(concept)
    same = world.OBJECTS if domain == "object" else world.STYLES
    other = world.STYLES if domain == "object" else world.OBJECTS
    def fill(c: str) -> list[str]:
        out = []
        for t in (*world.TEMPLATES, *world.EVAL_TEMPLATES):
            for o in other[:per_template]:
                obj, sty = (c, o) if domain == "object" else (o, c)
                out.append(" ".join(t.format(object=obj, style=sty, colour="red", background="white",
                                             size="big").split()))
        return out
    return fill(concept), [p for c in same if c != concept for p in fill(c)]


def showcase_prompts(concept: str, others: list[str], settings: int = 5) -> tuple[list[str], list[str]]:
    """Captions for before/after images: `concept` in the first `settings` settings of the other domain (styles
    for an object), and each of `others` (concepts of its own domain) in the first of those settings."""
    domain, _ = concept_domain(concept)
    settings_of = world.STYLES if domain == "object" else world.OBJECTS

    def caption(c: str, setting: str) -> str:
        return f"a {c} image in {setting} style" if domain == "object" else f"a {setting} image in {c} style"

    return [caption(concept, s) for s in settings_of[:settings]], [caption(c, settings_of[0]) for c in others]


def evaluate_erasure(model: str, concept: str | None, patches: list, seeds: tuple[int, ...] = (0, 1),
                     templates: tuple[str, ...] | None = None, base: bool = False, probe: bool = False,
                     steps: int | None = None, guidance: float | None = None, out: Path | None = None,
                     progress: bool = True, pipe=None, classifier=None, device=None,
                     dtype=None) -> dict[str, Any]:
    """UA / IRA / CRA of `patches` on the MiniCanvas model `model` (see `hirm eval`). `device` / `dtype`: where and
    in what precision the pipeline (when not given) and the judge run (None: the CPU, float32; "auto" as in
    `hirm.encoders.resolve_device` / `resolve_dtype`)."""
    registry.require_minicanvas(model)
    if concept is None and patches:
        concept = patches[0].concepts[0]
    if concept is not None:
        concept_domain(concept)  # validates the name before minutes of sampling
    if templates is not None:
        for t in templates:
            if "{object}" not in t or "{style}" not in t:
                raise HirmError(f"--templates {t!r}: each template needs {{object}} and {{style}}")
    pipe = pipe or load_pipeline(model, dtype=dtype, device=device)
    classifier = classifier or registry.load_classifier()
    if device is not None:
        classifier = classifier.to(pipe.device)
    sampling = registry.SAMPLING
    kwargs = {"seeds": seeds, "steps": steps or sampling["steps"], "guidance": guidance or sampling["guidance"],
              "progress": progress}
    if templates:
        kwargs["templates"] = templates
    result: dict[str, Any] = {"model": model, "patches": [p.id for p in patches], "seeds": list(seeds),
                              "templates": list(templates or world.EVAL_TEMPLATES)}
    metrics, grid = evaluate(pipe, concept, classifier, patches, **kwargs)
    result.update(metrics)
    erased = list(dict.fromkeys(c for p in patches for c in p.concepts))
    if len(erased) > 1:  # a patch of several concepts: each one's UA, and what was left alone
        for c in erased:
            concept_domain(c)
        result["erased"] = score_concepts(grid, erased)
    grids = {"patched" if patches else "model": grid}
    if base and patches:
        result["base"], grids["base"] = evaluate(pipe, concept, classifier, [], **kwargs)
    if probe:
        if not patches or concept is None:
            raise HirmError("--probe compares the encoder with and without a patch: pass --patch")
        encoder = find_text_encoders(pipe)[0]
        in_p, out_p = probe_prompts(concept)
        patch = next(p for p in patches if encoder.name in p.components)
        result["probe"] = locality_probe(encoder, patch, in_p, out_p)
    if out is not None:
        for name, g in grids.items():
            save_atomic(_grid_image(g), Path(out) / f"grid-{name}.png")
        write_text_atomic(json.dumps(result, indent=1), Path(out) / "metrics.json")
    return result


def _grid_image(g):
    """Objects as rows, styles as columns: the first template and seed of each cell."""
    per_cell = len(g.images) // (len(world.OBJECTS) * len(world.STYLES))
    return image_grid(g.images[::per_cell], cols=len(world.STYLES), scale=2)


def available_models() -> list[str]:
    """The MiniCanvas generators in this install (mini-Flux ships beside mini-SD once trained)."""
    return [m for m in registry.NAMES if (registry.FOLDERS[m] / "model_index.json").exists()]


def run_demo(out: Path, concept: str, seeds: tuple[int, ...],
             show: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Erase `concept` from mini-SD with hirm's default method; score the patch on mini-SD and, unchanged, on
    mini-Flux (the same CLIP encoder); save grids and a report. `show` gets each model's scores as they come
    (the CLI prints them); progress is logged."""
    start = time.perf_counter()
    domain, _ = concept_domain(concept)
    out = Path(out)
    pipe = load_pipeline("minicanvas")
    classifier = registry.load_classifier()
    logger.info("erasing %r (%s) from mini-SD with HiRM (hirm's default recipe) ...", concept, domain)
    patch = api.erase(pipe, concept, progress=False)
    patch_path = patch.save(out / f"{concept.replace(' ', '-')}.safetensors")
    logger.info("patch %s (%.2f MB) made in %.1fs", patch_path, patch.nbytes / 1e6, sum(patch.seconds.values()))
    # before/after: the concept in five other-domain settings, then five other concepts of its domain
    same = [c for c in (world.OBJECTS if domain == "object" else world.STYLES) if c != concept][:5]
    concept_prompts, other_prompts = showcase_prompts(concept, same)
    prompts = concept_prompts + other_prompts
    results, lines, files = {}, [], []
    for model in available_models():
        if model != "minicanvas":
            logger.info("the same patch, unchanged, on %s ...", model)
            pipe = load_pipeline(model)
        folder = out if model == "minicanvas" else out / model
        result = evaluate_erasure(model, concept, [patch], seeds=seeds, base=True, probe=model == "minicanvas",
                                  out=folder, pipe=pipe, classifier=classifier)
        if show is not None:
            show(result)
        kw = {"seed": 0, "steps": registry.SAMPLING["steps"], "guidance": registry.SAMPLING["guidance"]}
        before = sample(pipe, prompts, **kw)
        with patch.applied(pipe):
            after = sample(pipe, prompts, **kw)
        grid_path = save_atomic(image_grid(before + after, cols=len(prompts), scale=3), folder / "before-after.png")
        files.append(str(grid_path.relative_to(out)))
        results[model] = result
        lines += [f"## {model}", "", "| model | UA | IRA | CRA |", "|---|---|---|---|",
                  *(f"| {n} | {r['ua']:.3f} | {r['ira']:.3f} | {r['cra']:.3f} |" for n, r in
                    (("base", result["base"]), ("patched", result))),
                  "", f"{result['n_images']} images per model ({len(seeds)} seed(s) per object x style cell).", ""]
    seconds = time.perf_counter() - start
    report = [
        f"# hirm demo: erasing {concept!r} from mini-SD (HiRM, hirm's default recipe)", "",
        f"Patch: `{patch_path.name}`, {patch.nbytes / 1e6:.2f} MB, made in {sum(patch.seconds.values()):.1f}s on "
        "mini-SD's CLIP encoder; mini-Flux shares that encoder and gets the patch unchanged (zero-shot).", "",
        *lines,
        f"`before-after.png` (per model): top row base, bottom row patched. Columns: {'; '.join(prompts)}.", "",
        f"Total demo time: {seconds:.0f}s.",
    ]
    write_text_atomic("\n".join(report) + "\n", out / "report.md")
    logger.info("wrote %s/: report.md, %s, grid-*.png, metrics.json, %s (%.0fs in all)", out, ", ".join(files),
                patch_path.name, seconds)
    return results["minicanvas"]
