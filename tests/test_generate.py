"""Sampling any pipeline with fixed seeds: guidance reaches Flux transformers without a guidance embedding."""

import numpy as np

from dummies import flux_pipeline
from hirm.generate import sample


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_flux_without_guidance_embedding_gets_true_cfg():
    pipe = flux_pipeline()
    assert not pipe.transformer.config.guidance_embeds  # as Flux-schnell and mini-Flux
    plain = sample(pipe, ["a red star"], steps=2, guidance=1.0)[0]
    guided = sample(pipe, ["a red star"], steps=2, guidance=4.0)[0]
    again = sample(pipe, ["a red star"], steps=2, guidance=4.0)[0]
    assert np.abs(_pixels(plain) - _pixels(guided)).max() > 0  # guidance_scale alone would be ignored
    assert np.array_equal(_pixels(guided), _pixels(again))


def test_flux_samples_at_its_t5_tokenizers_length(monkeypatch):
    pipe = flux_pipeline()
    pipe.tokenizer_2.model_max_length = 16
    seen = {}
    original = type(pipe)._get_t5_prompt_embeds

    def spy(self, *args, **kwargs):
        seen["max_sequence_length"] = kwargs.get("max_sequence_length")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "_get_t5_prompt_embeds", spy)
    sample(pipe, ["a red star"], steps=1)
    assert seen["max_sequence_length"] == 16
