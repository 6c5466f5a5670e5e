"""Pathway ablation on a tiny Flux pipeline: one conditioning pathway carries the prompt, the other is blank."""

import pytest
import torch

from dummies import flux_pipeline
from hirm.errors import HirmError
from hirm.eval.pathways import ablate


def _encode(pipe, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    seq, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, max_sequence_length=16)
    return seq, pooled


def test_ablate_blanks_exactly_one_pathway():
    pipe = flux_pipeline()
    red, blue = _encode(pipe, "a red star"), _encode(pipe, "a blue circle")
    assert not torch.allclose(red[0], blue[0]) and not torch.allclose(red[1], blue[1])
    with ablate(pipe, "pooled"):  # only the pooled vector carries the prompt: every T5 sequence is the same
        r, b = _encode(pipe, "a red star"), _encode(pipe, "a blue circle")
    assert torch.equal(r[0], b[0]) and torch.allclose(r[1], red[1])
    with ablate(pipe, "sequence"):  # only T5 carries it: every pooled vector is the same
        r, b = _encode(pipe, "a red star"), _encode(pipe, "a blue circle")
    assert torch.equal(r[1], b[1]) and torch.allclose(r[0], red[0])
    assert torch.allclose(_encode(pipe, "a red star")[0], red[0])  # hooks removed on exit


def test_ablate_rejects_bad_input():
    from dummies import sd_pipeline

    with pytest.raises(HirmError, match="not a Flux-architecture pipeline"), ablate(sd_pipeline(), "pooled"):
        pass
    with pytest.raises(HirmError, match="pathway 'clip'"), ablate(flux_pipeline(), "clip"):
        pass
