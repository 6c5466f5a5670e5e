"""Behaviour pinned across refactors: each method's patch at a fixed seed, on the dummy SD pipeline and the shipped
MiniCanvas encoder, against values recorded in `reference_patches.json`.

Exact bytes differ between hosts and thread counts, so each trained tensor is summarised by its change from the
base weights: the change's norm (compared at 1e-3 of itself) and its projections on two fixed random unit
directions (at 1e-2 of their typical size, norm / sqrt(numel)); a moved default, a reordered loss term or a changed
prompt set moves them by far more. After a change that is meant to move a patch, re-record with
`HIRM_RECORD_REFERENCE=1 pytest tests/erase/test_reference_patches.py` and say why in the commit.
"""

import json
import os
from pathlib import Path

import pytest
import torch

import dummies
import hirm
from hirm.encoders import load_text_encoders
from hirm.patch import SEP

REFERENCE = Path(__file__).with_name("reference_patches.json")
RECORD = os.environ.get("HIRM_RECORD_REFERENCE") == "1"

CASES = {
    "sd/hirm": ("sd", "hirm", {"steps": 4}),
    "sd/hirm-fast": ("sd", "hirm", {"steps": 4, "retain_per_step": 5, "sequence_length": 16}),
    "sd/hirm-r": ("sd", "hirm-r", {"steps": 4, "lr": 1e-3}),
    "sd/hirm-s": ("sd", "hirm-s", {"steps": 4, "lr": 1e-3, "target": "a shape"}),
    "sd/hirm-lora": ("sd", "hirm", {"steps": 4, "lora_rank": 2}),
    "sd/quickfix": ("sd", "quickfix", {}),
    "sd/uce": ("sd", "uce", {}),
    "sd/esd-x": ("sd", "esd-x", {"steps": 2, "ddim_steps": 4}),
    "minicanvas/hirm": ("minicanvas", "hirm", {"steps": 3}),
}
SLOW = {"minicanvas/hirm"}


@pytest.fixture(scope="module")
def models():
    return {"sd": dummies.sd_pipeline(), "minicanvas": load_text_encoders("minicanvas")}


def summary(patch, model) -> dict[str, list[float]]:
    """Per trained tensor: [|delta|, delta . r1, delta . r2], r fixed unit directions."""
    encoders = model if isinstance(model, list) else None
    base = {}
    for key in patch.tensors:
        component, name = key.split(SEP, 1)
        module = next(e.model for e in encoders if e.name == component) if encoders else getattr(model, component)
        base[key] = module.state_dict()[name].float()
    out = {}
    for key in sorted(patch.tensors):
        delta = (patch.tensors[key].float() - base[key]).flatten()
        g = torch.Generator().manual_seed(0)
        r = torch.randn(2, delta.numel(), generator=g)
        r = r / r.norm(dim=1, keepdim=True)
        out[key] = [float(delta.norm()), *map(float, r @ delta)]
    return out


def made(models, case: str):
    """Case `case`'s summary and its patch, made now."""
    where, method, options = CASES[case]
    patch = hirm.erase(models[where], "a red star" if where == "sd" else "star", method=method, seed=42,
                       progress=False, **options)
    return summary(patch, models[where]), patch


@pytest.mark.skipif(RECORD, reason="recording")
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in sorted(CASES)])
def test_patch_matches_reference(models, case):
    reference = json.loads(REFERENCE.read_text())[case]
    got, patch = made(models, case)
    assert sorted(got) == sorted(reference), "a different set of tensors was trained"
    for key, (norm, *projections) in reference.items():
        assert abs(got[key][0] - norm) <= 1e-3 * norm + 1e-8, (key, got[key], reference[key])
        tolerance = 1e-2 * norm / patch.tensors[key].numel() ** 0.5 + 1e-8
        assert all(abs(a - b) <= tolerance for a, b in zip(got[key][1:], projections, strict=True)), key


@pytest.mark.skipif(not RECORD, reason="set HIRM_RECORD_REFERENCE=1 to re-record the reference values")
def test_record_reference(models):
    recorded = {case: made(models, case)[0] for case in sorted(CASES)}
    REFERENCE.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
