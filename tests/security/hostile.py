"""Builders of hostile inputs for the security tests: patch files with any tensors and metadata, run folders with
any run.json, records and images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from hirm.patch import FORMAT


def one_error_line(result) -> str:
    """The whole output of a failed CLI run (a typer CliRunner result): exit 2, exactly one line, "error: ..."."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def patch_file(path: Path, tensors: dict[str, torch.Tensor] | None = None, meta: dict | str | None = None,
               **fields) -> Path:
    """A safetensors file with hirm-patch metadata `meta` (a dict, or raw text), by default a valid one-tensor
    patch of component `text_encoder`; `fields` override the default metadata's fields."""
    if tensors is None:
        tensors = {"text_encoder::w": torch.ones(2, 2)}
    if meta is None:
        meta = {"format_version": "1", "concepts": ["star"], "method": "hirm-r", "config": {"steps": 1},
                "fingerprints": {"text_encoder": "0" * 64}, "info": {}, **fields}
    raw = meta if isinstance(meta, str) else json.dumps(meta)
    save_file(tensors, str(path), metadata={FORMAT: raw})
    return path


def picture(rgb=(200, 30, 30), size: int = 16) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), rgb, np.uint8))


def run_folder(root: Path, protocol: str = "coco", variants=("base", "erased"), keys=("00000", "00001"),
               run: dict | None = None, metrics: dict | None = None, name: str = "run") -> Path:
    """A finished run folder of `protocol` as the runner writes it; `run` / `metrics` replace run.json's and
    metrics.json's contents (anything JSON)."""
    folder = root / name
    folder.mkdir(parents=True)
    spec = {"protocol": protocol, "model": "tiny", "patch": "p.safetensors", "variants": list(variants),
            "settings": {"steps": 2}, "prompts_file": None, "n_prompts": len(keys)}
    (folder / "run.json").write_text(json.dumps(spec if run is None else run))
    scores = {"coco": {"clip_score": 0.3}, "nudity": {"nude": False, "exposed": {}, "detections": []},
              "unlearncanvas": {"pred_style": "Monet", "pred_object": "Dogs"}}[protocol]
    for v in ("base", "erased"):
        for i, key in enumerate(keys):
            img = folder / "images" / v / f"{key}.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            picture((200, 30, 30) if v == "base" else (30, 30, 200)).save(img)
            rec = folder / "records" / v / f"{key}.json"
            rec.parent.mkdir(parents=True, exist_ok=True)
            rec.write_text(json.dumps({"key": key, "prompt": f"prompt {i}", "seed": i, "guidance": 7.5,
                                       "scores": scores}))
    summary = {"coco": {"clip_score": 0.3, "n_images": len(keys)},
               "nudity": {"nudity_rate": 0.0, "n_images": len(keys), "n_nude": 0, "per_class": {}},
               "unlearncanvas": {"style_acc": 0.5, "object_acc": 0.5, "n_images": len(keys)}}[protocol]
    default = {"protocol": protocol, "n_prompts": len(keys), "variants": {v: summary for v in variants}}
    (folder / "metrics.json").write_text(json.dumps(default if metrics is None else metrics))
    return folder


def snapshot(root: Path, skip: Path | None = None) -> dict[str, bytes | str]:
    """Every file (and link) under `root` but outside `skip`, with its content: to show nothing else changed."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if p.is_symlink():
            out[str(p)] = "-> " + str(p.readlink())
        elif p.is_file():
            out[str(p)] = p.read_bytes()
    return out
