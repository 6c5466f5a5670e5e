"""Attacks on erased MiniCanvas models: the probes each attack makes, shared scoring, and `hirm attack`."""

import json

import pytest
import torch
from typer.testing import CliRunner

import hirm
from hirm.attacks import attack
from hirm.attacks.paraphrase import ParaphraseConfig, paraphrase_probes
from hirm.attacks.ringabell import RingABellConfig, _encode_ids, genetic_search
from hirm.cli import app
from hirm.errors import HirmError
from hirm.minicanvas import registry, world
from hirm.tokens import typo, vocabulary

runner = CliRunner()


@pytest.fixture(scope="module")
def pipe():
    from hirm.encoders import load_pipeline

    return load_pipeline("minicanvas")


def test_paraphrase_probes_say_the_concept_other_ways():
    probes = paraphrase_probes(None, "star", [], ParaphraseConfig(per_kind=2, seed=3))
    kinds = [p.kind for p in probes]
    assert kinds == ["synonym"] * 2 + ["template"] * 2 + ["typo"] * 2 + ["sentence"] * 2
    synonyms = [p.prompt for p in probes if p.kind == "synonym"]
    assert all(any(s in p for s in world.OBJECT_SYNONYMS["star"]) for p in synonyms)
    assert all("star" not in p.prompt.split() for p in probes if p.kind == "typo")
    assert probes == paraphrase_probes(None, "star", [], ParaphraseConfig(per_kind=2, seed=3))  # seeded
    import random

    assert all(typo("watercolor", random.Random(s)) != "watercolor" for s in range(20))
    with pytest.raises(HirmError, match="paraphrase kind 'slang'"):
        paraphrase_probes(None, "star", [], ParaphraseConfig(kinds=("slang",)))


def test_genetic_search_moves_toward_its_target(pipe):
    enc, tok = pipe.text_encoder, pipe.tokenizer
    vocab = vocabulary(tok, "world")
    target = _encode_ids(enc, tok, vocab[:6][None])[0]  # reachable: six world tokens
    cfg = RingABellConfig(length=6, population=16, generations=1)
    _, first = genetic_search(enc, tok, target, vocab, cfg, torch.Generator().manual_seed(0))
    cfg.generations = 15
    _, later = genetic_search(enc, tok, target, vocab, cfg, torch.Generator().manual_seed(0))
    assert later < first


def test_embedding_input_undoes_a_text_encoder_patch_exactly(pipe):
    patch = hirm.erase(pipe, "circle", method="quickfix", progress=False)
    clf = registry.load_classifier()
    s = registry.SAMPLING
    r = attack(pipe, "circle", "embedding", [patch], clf, seeds=(0,), denoise_steps=s["steps"], guidance=s["guidance"],
               progress=False, prompts=3)
    assert r.n == 3 and r.asr == r.base_asr
    assert all(p["erased"] == p["base"] for p in r.probes)
    cache: dict = {}  # probes that do not depend on the erased model, and their base hits, found once
    first = attack(pipe, "circle", "embedding", [], clf, seeds=(0,), denoise_steps=s["steps"], guidance=s["guidance"],
                   progress=False, prompts=3, cache=cache)
    again = attack(pipe, "circle", "embedding", [patch], clf, seeds=(0,), denoise_steps=s["steps"],
                   guidance=s["guidance"], progress=False, prompts=3, cache=cache)
    assert len(cache) == 1 and first.asr == first.base_asr == again.base_asr == r.base_asr and again.asr == r.asr
    plain = attack(pipe, "circle", "paraphrase", [patch], clf, seeds=(0,), denoise_steps=s["steps"],
                   guidance=s["guidance"], progress=False, kinds=("template",), per_kind=3)
    assert plain.n == 3 and 0.0 <= plain.asr <= 1.0
    # the attack's own `steps` option is not the sampler's
    cce = attack(pipe, "circle", "cce", [patch], clf, seeds=(0,), denoise_steps=2, progress=False, steps=1, images=2,
                 prompts=1)
    assert cce.n == 1


def test_attack_cli_json_and_files(tmp_path):
    patch_path = tmp_path / "circle.safetensors"
    r = runner.invoke(app, ["erase", "--model", "minicanvas", "--concept", "circle", "--method", "quickfix",
                            "--out", str(patch_path)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "atk"
    r = runner.invoke(app, ["attack", "--patch", str(patch_path), "--attacks", "paraphrase,ringabell", "--seeds", "0",
                            "--option", "paraphrase.per_kind=1", "--option", "ringabell.prompts=1",
                            "--option", "ringabell.generations=2", "--option", "ringabell.population=8",
                            "--json", "--out", str(out)])
    assert r.exit_code == 0, r.output
    table = json.loads(r.stdout.strip().splitlines()[-1])
    assert table["concept"] == "circle" and [x["attack"] for x in table["rows"]] == ["paraphrase", "ringabell"]
    for row in table["rows"]:
        assert {"attack", "asr", "base_asr", "n", "seconds"} <= set(row) and 0 <= row["asr"] <= 1
    assert table["rows"][0]["n"] == 4 and table["rows"][1]["n"] == 1
    for name in ("attack.json", "prompts-paraphrase.json", "grid-ringabell.png"):
        assert (out / name).stat().st_size > 0


def test_attack_cli_bad_input(tmp_path):
    r = runner.invoke(app, ["attack", "--concept", "circle"])
    assert r.exit_code == 2 and "--patch is required" in r.output
    patch = hirm.erase([hirm.TextEncoder("text_encoder", registry.load_pipeline("minicanvas").text_encoder,
                                         registry.load_pipeline("minicanvas").tokenizer)], "circle",
                       method="quickfix", progress=False)
    path = patch.save(tmp_path / "p.safetensors")
    r = runner.invoke(app, ["attack", "--patch", str(path), "--attacks", "jailbreak"])
    assert r.exit_code == 2 and "unknown attack 'jailbreak'" in r.output
    r = runner.invoke(app, ["attack", "--patch", str(path), "--attacks", "ringabell", "--option", "ringabell.size=3"])
    assert r.exit_code == 2 and "no option 'size'" in r.output
    r = runner.invoke(app, ["attack", "--patch", str(path), "--attacks", "ringabell", "--budget", "0"])
    assert r.exit_code == 2 and "budget factor 0.0: need a positive number" in r.output


def test_budget_scales_each_attacks_search_and_a_larger_search_gets_closer(pipe):
    """The attack-strength check: `--budget K` multiplies exactly the search-budget fields, and on the same seed
    Ring-A-Bell's search at 4x its budget ends at least as close to its target as at 1x."""
    from hirm.attacks import ATTACKS, budget_options
    from hirm.attacks.runner import run_attacks

    small = {"generations": 3, "population": 8, "prompts": 1}
    assert budget_options("ringabell", small, 4) == {"generations": 12, "population": 32, "prompts": 1}
    assert budget_options("unlearndiff", {}, 4)["steps"] == 4 * ATTACKS.config("unlearndiff", {}).steps
    assert budget_options("cce", {"steps": 50}, 0.5) == {"steps": 25}
    assert budget_options("paraphrase", {"per_kind": 2}, 4) == {"per_kind": 2}  # no search: nothing to scale
    enc, tok = pipe.text_encoder, pipe.tokenizer
    vocab = vocabulary(tok, "world")
    target = _encode_ids(enc, tok, vocab[10:16][None])[0]
    losses = [genetic_search(enc, tok, target, vocab,
                             RingABellConfig(length=6, **budget_options("ringabell", small, k)),
                             torch.Generator().manual_seed(0))[1] for k in (1, 4)]
    assert losses[1] <= losses[0]
    patch = hirm.erase(pipe, "circle", method="quickfix", progress=False)
    table = run_attacks("minicanvas", "circle", [patch], ["ringabell"], (0,), options={"ringabell": small},
                        progress=False, budget=4)
    assert table["budget"] == 4 and table["options"]["ringabell"] == {**small, "generations": 12, "population": 32}
    assert table["rows"][0]["n"] == 1


@pytest.mark.parametrize("name", ["unlearndiff", "cce"])
def test_inversion_attacks_learn_against_the_erased_denoiser(pipe, name):
    """A few steps on the shipped mini-SD: prompts come back, the learned embedding is in place only while a
    CCE probe generates, and the pipeline's weights are untouched afterwards."""
    from hirm.attacks import ATTACKS
    from hirm.patch import fingerprint

    patch = hirm.erase(pipe, "circle", method="quickfix", progress=False)
    before = fingerprint(pipe.text_encoder), fingerprint(pipe.unet)
    cfg = ATTACKS.config(name, {"prompts": 2, "steps": 3, "images": 4, "batch": 2})
    probes = ATTACKS[name].run(pipe, "circle", [patch], cfg, progress=False)
    assert len(probes) == 2 and all(p.kind == name for p in probes)
    assert (fingerprint(pipe.text_encoder), fingerprint(pipe.unet)) == before
    assert all(p.requires_grad for p in pipe.unet.parameters())
    if name == "cce":
        assert all("sks" in p.prompt for p in probes)
        table = pipe.text_encoder.get_input_embeddings()
        ids = pipe.tokenizer(probes[0].prompt, return_tensors="pt").input_ids
        plain = table(ids)
        with probes[0].setup(pipe):
            learned = table(ids)
        assert not torch.equal(plain, learned) and torch.equal(plain, table(ids))
    else:
        assert all(p.prompt.endswith("style") and len(p.prompt.split()) > 5 for p in probes)
    with pytest.raises(HirmError, match=r"Stable-Diffusion-1\.x/2\.x-style"):
        from dummies import flux_pipeline

        ATTACKS[name].run(flux_pipeline(), "circle", [], cfg, progress=False)
