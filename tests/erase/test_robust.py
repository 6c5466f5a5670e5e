"""The robust preset: one patch with a text-encoder half (the method's) and a denoiser half (UCE with hirm's
unnamed reference), and what it does where the denoiser half cannot go."""

import logging

import pytest
import torch

import dummies
import hirm
from hirm.erase import ROBUST_DENOISER_OPTIONS, robust_method
from hirm.erase.denoiser import encode
from hirm.erase.uce import unnamed_pairs
from hirm.errors import HirmError
from hirm.patch import Patch

FAST = {"steps": 3, "progress": False}


@pytest.fixture(scope="module")
def pipe():
    return dummies.sd_pipeline()


@pytest.fixture(scope="module")
def robust(pipe):
    return hirm.erase(pipe, "star", robust=True, **FAST)


def value_projection(pipe):
    return next(m for n, m in pipe.unet.named_modules() if n.endswith("attn2.to_v"))


def test_unnamed_pairs_pair_each_token_after_the_concept_with_the_same_token_unnamed(pipe):
    prompt, unnamed = "a red star on a table", "a red on a table"
    ((keys, refs),) = unnamed_pairs(pipe, [prompt], ["star"])
    emb, ref = encode(pipe, [prompt, unnamed])
    ids = pipe.tokenizer(prompt)["input_ids"]
    first = 3  # <bos> a red | star on a table <eos>
    assert pipe.tokenizer(unnamed)["input_ids"] == ids[:first] + ids[first + 1:]  # "star" is one token here
    assert torch.equal(keys, emb[first:])
    assert torch.equal(refs[0], ref[first - 1])  # the concept's token: the token before it ("red")
    assert torch.equal(refs[1:], ref[first:len(ref) - 1])  # the rest: the same token of the unnamed prompt


def test_uce_unnamed_reference_maps_the_concept_in_context_to_its_unnamed_prompt(pipe):
    templates = ("a {} on a table", "a photo of a {}")
    patch = hirm.erase(pipe, "star", method="uce", reference="unnamed", templates=templates, preserve=("circle",),
                       lamb=1e-3, progress=False)
    assert patch.config["reference"] == "unnamed" and patch.components == ["unet"]
    proj = value_projection(pipe)
    ((keys, refs),) = unnamed_pairs(pipe, ["a star on a table"], ["star"])
    with torch.no_grad():
        before, target = proj(keys), proj(refs)
        with patch.applied(pipe):
            after = proj(keys)
    # most of the way (a 32-wide dummy cannot fit every padded position of both templates exactly)
    assert (after - target).norm() < 0.5 * (before - target).norm()
    with pytest.raises(HirmError, match="drop --set guide"):
        hirm.erase(pipe, "star", method="uce", reference="unnamed", guide="a circle", progress=False)
    with pytest.raises(HirmError, match="reference 'other'"):
        hirm.erase(pipe, "star", method="uce", reference="other", progress=False)


def test_robust_preset_is_one_patch_with_both_halves(pipe, robust, tmp_path):
    assert robust.method == "hirm+uce" and robust.components == ["text_encoder", "unet"]
    assert {k: robust.config["uce"][k] for k in ROBUST_DENOISER_OPTIONS} == dict(ROBUST_DENOISER_OPTIONS)
    loaded = Patch.load(robust.save(tmp_path / "robust.safetensors"))
    assert loaded.id == robust.id and loaded.config["uce"]["reference"] == "unnamed"
    before = {c: {n: p.detach().clone() for n, p in getattr(pipe, c).named_parameters()} for c in robust.components}
    with loaded.applied(pipe):
        for c in robust.components:  # both halves are in the model
            assert any(not torch.equal(p, before[c][n]) for n, p in getattr(pipe, c).named_parameters())
    for c in robust.components:  # and both are gone after
        assert all(torch.equal(p, before[c][n]) for n, p in getattr(pipe, c).named_parameters())


def test_robust_denoiser_half_moves_what_the_base_embeddings_make_of_the_concept(pipe, robust):
    """What the embedding-input attack feeds the UNet (the base encoder's embeddings) is misdirected by the
    denoiser half, which the text half alone leaves exactly as it was."""
    text_only = robust.only(["text_encoder"])
    proj = value_projection(pipe)
    with torch.no_grad():
        emb = encode(pipe, ["a star on a table"])  # the base encoder's, as the attack has them
        base = proj(emb)
        with text_only.applied(pipe):
            assert torch.equal(proj(emb), base)
        with robust.applied(pipe):
            moved = (proj(emb) - base).norm() / base.norm()
            kept = (proj(encode(pipe, ["a circle on a table"])) - proj(encode(pipe, ["a circle on a table"])))
    assert moved > 0.05 and kept.abs().max() == 0  # (the second encode runs patched: only the UNet half differs)


@pytest.mark.parametrize("half", ["text_encoder", "unet"])
def test_robust_patch_refuses_a_model_that_differs_in_either_half(pipe, robust, half):
    other = dummies.sd_pipeline()
    setattr(other, half, getattr(dummies.sd_pipeline(seed=1), half))
    before = {c: [p.detach().clone() for p in getattr(other, c).parameters()] for c in robust.components}
    with pytest.raises(HirmError, match=f"made for {half} with fingerprint"):
        robust.apply(other)
    for c in robust.components:  # all or nothing: the half that matched is not applied either
        assert all(torch.equal(p, q) for p, q in zip(getattr(other, c).parameters(), before[c], strict=True))


def test_robust_patch_on_a_model_without_its_denoiser_names_the_half_that_applies(robust):
    with pytest.raises(HirmError, match=r"no such component .*--only text_encoder"):
        robust.apply(dummies.flux_pipeline())


def test_robust_options_reach_their_half_and_the_preset_needs_a_final_state_hirm(pipe):
    patch = hirm.erase(pipe, "star", robust=True, **{"uce.erase_scale": 2.0}, **FAST)
    assert patch.method == "hirm+uce" and patch.config["uce"]["erase_scale"] == 2.0
    for method in ("uce", "quickfix", "esd-x", "hirm-r+uce"):
        with pytest.raises(HirmError, match="--robust adds a denoiser half to a HiRM text-encoder edit"):
            robust_method(method, ["unet", "text_encoder"])
    # HiRM-R's paper recipe supervises the last attention output, which the denoiser does not read
    with pytest.raises(HirmError, match="supervise_module=final"):
        hirm.erase(pipe, "star", method="hirm-r", robust=True, **FAST)
    r = hirm.erase(pipe, "star", method="hirm-r", robust=True, supervise_module="final", **FAST)
    assert r.method == "hirm-r+uce"


def test_text_half_aims_through_the_denoiser_half(pipe, robust):
    """through_denoiser(v) is what the edited projections turn into what the original ones made of v, so the
    text half's targets land, through the denoiser half, where the text half alone would send them."""
    from hirm.erase.denoiser import cross_attention_projections
    from hirm.erase.uce import through_denoiser

    unet = robust.only(["unet"])
    aim = through_denoiser(pipe, unet)
    v = encode(pipe, ["a star on a table", "a photo of a circle"]).flatten(0, 1)
    aimed = aim(v)
    projections = cross_attention_projections(pipe.unet)
    with torch.no_grad():
        base = {n: m(v) for n, m in projections.items()}
        with unet.applied(pipe):
            through = {n: m(aimed) for n, m in projections.items()}
            plain = {n: m(v) for n, m in projections.items()}
    gap = sum(float((through[n] - base[n]).norm()) for n in base)
    unaimed = sum(float((plain[n] - base[n]).norm()) for n in base)
    assert gap < 0.1 * unaimed
    assert robust.info["hirm"]["text_encoder"]["targets"] == "aimed through the denoiser half"


@pytest.mark.parametrize("build", [dummies.sdxl_pipeline, dummies.flux_pipeline])
def test_robust_on_a_denoiser_it_cannot_edit_is_the_text_half_with_a_warning(build, caplog):
    with caplog.at_level(logging.WARNING, logger="hirm.erase"):
        patch = hirm.erase(build(), "star", robust=True, **FAST)
    assert patch.method == "hirm" and all(c.startswith("text_encoder") for c in patch.components)
    assert any("text-encoder half only" in r.getMessage() for r in caplog.records)
