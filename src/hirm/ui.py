"""`hirm ui`: erase concepts from a model in the browser (a Gradio page, the field's demo convention).

One click erases the typed concepts with the chosen method and shows what changed: images of each concept and of
its nearest neighbours (the concepts an erasure is most likely to disturb) before and after, the scores (UA / IRA /
CRA against the base model on MiniCanvas, which ships a judge; the representation-level locality probe on any
model), and the patch to download, with an export for other tools if asked.

`Workbench` does the work and knows nothing of Gradio (tested directly); `build_app` lays out the page around it.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from hirm import api
from hirm.encoders import find_text_encoders, load_pipeline
from hirm.erase import METHODS
from hirm.errors import HirmError
from hirm.eval.erasure import available_models, probe_prompts, showcase_prompts
from hirm.eval.locality import final_states, locality_probe
from hirm.eval.minicanvas import Grid, evaluate, score, score_concepts
from hirm.export import export_clip, export_lora, text_components
from hirm.generate import sample
from hirm.images import grid as image_grid
from hirm.minicanvas import registry, world
from hirm.minicanvas.world import concept_domain
from hirm.patch import Patch

EXPORTS = ("none", "clip", "lora")
LORA_RANK = 16
NEIGHBOURS = 3  # nearest concepts shown next to each erased one
# what a model without a concept list is compared on when the page names no neighbours
DEFAULT_NEIGHBOURS = ("a dog", "a city street at night", "a bowl of fruit", "a portrait of a woman")
logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


@dataclass
class Erasure:
    """What one erase on the page made."""

    patch: Patch
    files: list[Path]  # the patch file, then any export
    before: Image.Image  # rows: each concept in a few settings, then its neighbours
    after: Image.Image
    scores: str  # Markdown
    seconds: float


def parse_concepts(text: str) -> list[str]:
    """The comma-separated names in `text`, blanks dropped, order kept, each once."""
    names = list(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))
    if not names:
        raise HirmError("no concept to erase: type one or more names, comma-separated (e.g. star, watercolor)")
    return names


def _file_stem(concepts: list[str], method: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(concepts) + "-" + method).strip("-")[:80]


class Workbench:
    """Loaded models and base images, kept between erases (loading and the base model's images are the slow
    part of a second click); files go under `workdir`."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self._pipes: dict[str, Any] = {}
        self._base_grids: dict[tuple[str, int], Grid] = {}
        self._classifier = None
        self._lock = threading.Lock()
        self._count = itertools.count(1)

    def pipeline(self, model: str):
        """The pipeline `model` names (MiniCanvas name or local folder), loaded once."""
        with self._lock:
            if model not in self._pipes:
                self._pipes[model] = load_pipeline(model)
            return self._pipes[model]

    def neighbours(self, pipe, concept: str, candidates: list[str], k: int = NEIGHBOURS) -> list[str]:
        """The `k` candidates whose prompts the base text encoder puts nearest `concept`'s (cosine of the final
        state at the end-of-text token, the summary the pooled conditioning is read from)."""
        candidates = [c for c in candidates if c != concept]
        if len(candidates) <= k:
            return candidates
        encoder = find_text_encoders(pipe)[0]
        states, eos = final_states(encoder, [f"a photo of {c}" for c in [concept, *candidates]])
        summary = torch.nn.functional.normalize(states[torch.arange(len(eos)), eos], dim=-1)
        similarity = summary[1:] @ summary[0]
        return [candidates[i] for i in similarity.argsort(descending=True)[:k].tolist()]

    def erase(self, model: str, concepts: list[str], method: str = "hirm", robust: bool = False,
              neighbours: list[str] | None = None, seed: int = 0, scored: bool = True, export: str = "none",
              target: str = "", progress: Progress | None = None) -> Erasure:
        """Erase `concepts` from `model` with `method` and show the change (see the module docstring).
        `neighbours`: what to compare with (None: each concept's nearest of its MiniCanvas domain, or
        DEFAULT_NEIGHBOURS on another model). `target`: the method's `target` option where given (HiRM-S's semantic
        target, the words hirm puts in the concept's place)."""
        progress = progress or (lambda fraction, text: None)
        if method not in METHODS:
            raise HirmError(f"method {method!r}: use one of {', '.join(METHODS)}")
        if export not in EXPORTS:
            raise HirmError(f"export {export!r}: use one of {', '.join(EXPORTS)}")
        start = time.perf_counter()
        minicanvas = model in registry.NAMES
        if minicanvas:
            for c in concepts:
                concept_domain(c)  # a clear error before a minute of work
        progress(0.0, f"loading {model}")
        pipe = self.pipeline(model)
        progress(0.05, f"erasing {', '.join(concepts)} with {method}{' (robust)' if robust else ''}")
        options = {"target": target.strip()} if target.strip() else {}
        patch = api.erase(pipe, concepts if len(concepts) > 1 else concepts[0], method=method, robust=robust,
                          progress=True, **options)
        stem = f"{next(self._count):03d}-{_file_stem(concepts, method)}"
        files = [patch.save(self.workdir / f"{stem}.safetensors")]
        files += self._export(patch, pipe, export, stem)

        progress(0.5, "drawing before / after")
        rows, labels = [], []
        for c in concepts:
            if neighbours is not None:
                candidates = neighbours
            elif minicanvas:
                domain, _ = concept_domain(c)
                candidates = [n for n in (world.OBJECTS if domain == "object" else world.STYLES) if n not in concepts]
            else:
                candidates = list(DEFAULT_NEIGHBOURS)
            shown = self.neighbours(pipe, c, candidates)
            if minicanvas:
                concept_prompts, other_prompts = showcase_prompts(c, shown, settings=NEIGHBOURS)
            else:
                concept_prompts = [f"a photo of {c}", f"a painting of {c}", f"a drawing of {c}"]
                other_prompts = [f"a photo of {n}" for n in shown]
            rows.append(concept_prompts + other_prompts)
            labels.append(f"{c} in {len(concept_prompts)} settings, then {', '.join(shown)}")
        prompts = [p for row in rows for p in row]
        kwargs = dict(registry.SAMPLING) if minicanvas else {}
        before = sample(pipe, prompts, seed=seed, **kwargs)
        with patch.applied(pipe):
            after = sample(pipe, prompts, seed=seed, **kwargs)
        cols = max(len(r) for r in rows)
        scale = 3 if minicanvas else 1
        before_grid = image_grid(before, cols=cols, scale=scale)
        after_grid = image_grid(after, cols=cols, scale=scale)

        lines = [f"**{', '.join(concepts)}** erased with `{method}`{' (robust)' if robust else ''} in "
                 f"{sum(patch.seconds.values()):.1f} s; patch {patch.nbytes / 1e6:.2f} MB.", "",
                 "Images, one row per concept: " + "; ".join(labels) + " (its nearest concepts).", ""]
        if scored and minicanvas:
            progress(0.6, "scoring on the 120-cell grid (base, then patched)")
            lines += self._scores(model, pipe, patch, concepts, seed)
        progress(0.9, "locality probe")
        lines += self._probe(pipe, patch, concepts, rows, minicanvas)
        seconds = time.perf_counter() - start
        lines += ["", f"{seconds:.0f} s in all."]
        progress(1.0, "done")
        return Erasure(patch, files, before_grid, after_grid, "\n".join(lines), seconds)

    def _export(self, patch: Patch, pipe, export: str, stem: str) -> list[Path]:
        if export == "none":
            return []
        encoders = find_text_encoders(pipe, which=[c for c in patch.components if c.startswith("text_encoder")])
        if export == "clip":
            return export_clip(patch, encoders, self.workdir / f"{stem}-clip").files
        return export_lora(patch, encoders, text_components(pipe),
                           self.workdir / f"{stem}-lora{LORA_RANK}.safetensors", rank=LORA_RANK).files

    def _scores(self, model: str, pipe, patch: Patch, concepts: list[str], seed: int) -> list[str]:
        """UA / IRA / CRA of each concept on one seed of the 120-cell grid, against the base model's (the base
        grid is made once per model and seed)."""
        if self._classifier is None:
            self._classifier = registry.load_classifier()
        grid_kwargs = {"seeds": (seed,), "steps": registry.SAMPLING["steps"],
                       "guidance": registry.SAMPLING["guidance"], "progress": True}
        if (model, seed) not in self._base_grids:
            self._base_grids[model, seed] = evaluate(pipe, None, self._classifier, [], **grid_kwargs)[1]
        base_grid = self._base_grids[model, seed]
        _, patched_grid = evaluate(pipe, None, self._classifier, [patch], **grid_kwargs)
        lines = ["| concept | UA (base) | IRA (base) | CRA (base) |", "|---|---|---|---|"]
        for c in concepts:
            after, before = score(patched_grid, c), score(base_grid, c)
            lines.append(f"| {c} | " + " | ".join(f"{after[m]:.3f} ({before[m]:.3f})" for m in ("ua", "ira", "cra"))
                         + " |")
        if len(concepts) > 1:
            kept, kept_base = score_concepts(patched_grid, concepts), score_concepts(base_grid, concepts)
            lines.append(f"\nEvery other concept, judged where no erased one appears: {kept['kept_acc']:.3f} "
                         f"(base {kept_base['kept_acc']:.3f}).")
        lines.append(f"\nUA: share of the concept's images no longer judged the concept; IRA / CRA: accuracy on the "
                     f"other concepts of its domain / of the other domain; {len(patched_grid.images)} images, seed "
                     f"{seed}.")
        return lines

    def _probe(self, pipe, patch: Patch, concepts: list[str], rows: list[list[str]], minicanvas: bool) -> list[str]:
        """How far the patch moves the final text representation of prompts naming each concept (IN) and of the
        others (OUT): the locality probe, on any model."""
        text = [c for c in patch.components if c.startswith("text_encoder")]
        if not text:
            return ["", "The patch leaves the text encoder as it is: no representation probe."]
        encoder = find_text_encoders(pipe, which=text[:1])[0]
        lines = ["", f"Locality probe on `{encoder.name}` (relative change of the final hidden states, median):", "",
                 "| concept | prompts naming it | other prompts | ratio |", "|---|---|---|---|"]
        for c, row in zip(concepts, rows, strict=True):
            if minicanvas:
                in_p, out_p = probe_prompts(c)
            else:
                in_p, out_p = row[:3], row[3:]
            r = locality_probe(encoder, patch, in_p, out_p)["all"]
            lines.append(f"| {c} | {r['in']:.3f} | {r['out']:.3f} | {r['ratio']:.1f} |")
        return lines


def require_gradio():
    """The gradio module, or a one-line error saying how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: nothing is sent anywhere
    try:
        import gradio
    except ImportError:
        raise HirmError("hirm ui needs Gradio: pip install 'hirm-erase[ui]'") from None
    return gradio


def build_app(model: str = "minicanvas", workbench: Workbench | None = None):
    """The Gradio page (a `gr.Blocks`), around `workbench` (default: one writing to a new temporary folder)."""
    gr = require_gradio()
    workbench = workbench or Workbench(Path(tempfile.mkdtemp(prefix="hirm-ui-")))
    models = list(dict.fromkeys([model, *available_models()]))
    methods = list(METHODS)

    def run(model_name: str, concepts_text: str, method: str, target: str, robust: bool, neighbours_text: str,
            seed: float, scored: bool, export: str, progress=gr.Progress(track_tqdm=True)):
        try:
            neighbours = parse_concepts(neighbours_text) if neighbours_text.strip() else None
            result = workbench.erase(model_name.strip(), parse_concepts(concepts_text), method, robust, neighbours,
                                     int(seed), scored, export, target,
                                     progress=lambda f, text: progress(f, desc=text))
        except HirmError as e:
            raise gr.Error(str(e)) from None
        return result.before, result.after, result.scores, [str(f) for f in result.files]

    with gr.Blocks(title="hirm: erase a concept") as app:
        gr.Markdown("## hirm: erase a concept from a text-to-image model\nHiRM misdirects the text encoder's "
                    "final representation of the concept; the patch drops into the pipeline.")
        with gr.Row():
            model_box = gr.Dropdown(models, value=model, allow_custom_value=True, label="model",
                                    info="a MiniCanvas model, or a local diffusers pipeline folder")
            concepts_box = gr.Textbox(label="concepts to erase", placeholder="star, watercolor", elem_id="concepts")
            method_box = gr.Dropdown(methods, value="hirm", label="method", info="hirm-r / hirm-s: the paper's "
                                     "variants; the others: baselines")
            target_box = gr.Textbox(label="target (optional)", placeholder="hirm-s: a painting",
                                    info="hirm-s: the semantic target (needed); hirm: words put in the concept's place")
            robust_box = gr.Checkbox(False, label="robust (also edit the denoiser's cross-attention)")
        with gr.Row():
            neighbours_box = gr.Textbox(label="compare with (comma-separated; empty: the nearest concepts)",
                                        elem_id="neighbours")
            seed_box = gr.Number(0, precision=0, label="image seed")
            scored_box = gr.Checkbox(True, label="score UA / IRA / CRA (MiniCanvas: 120 images, base and patched)")
            export_box = gr.Dropdown(list(EXPORTS), value="none", label="also export as",
                                     info=f"clip: the patched encoders (ComfyUI); lora: rank {LORA_RANK}")
        button = gr.Button("Erase", variant="primary", elem_id="erase")
        # one above the other, so that each column (one prompt and seed) lines up before and after
        before = gr.Image(label="before", type="pil", format="png", elem_id="before", interactive=False)
        after = gr.Image(label="after", type="pil", format="png", elem_id="after", interactive=False)
        scores = gr.Markdown(elem_id="scores")
        files = gr.File(label="patch (and export)", file_count="multiple", elem_id="files", interactive=False)
        button.click(run, [model_box, concepts_box, method_box, target_box, robust_box, neighbours_box, seed_box,
                           scored_box, export_box], [before, after, scores, files])
    app.workbench = workbench
    return app


def launch(model: str = "minicanvas", host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve the page on http://host:port until interrupted; the model loads in the background meanwhile."""
    app = build_app(model)

    def preload() -> None:
        try:
            app.workbench.pipeline(model)
        except HirmError as e:  # shown again, on the page, by the first erase
            logger.warning("%s", e)

    threading.Thread(target=preload, daemon=True).start()
    logger.info("patches and exports are written to %s (kept after the page closes)", app.workbench.workdir)
    app.queue(default_concurrency_limit=1).launch(server_name=host, server_port=port, inbrowser=False,
                                                  show_error=True, allowed_paths=[str(app.workbench.workdir)])
