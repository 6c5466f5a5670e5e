"""ESD, UCE, RECE, Diff-QuickFix and method combinations, end to end on a tiny random SD pipeline."""

import pytest
import torch

import dummies
import hirm
from hirm.erase.closed_form import ridge_edit
from hirm.erase.denoiser import transformer_parameter_names, unet_parameter_names
from hirm.erase.uce import aligned_pair
from hirm.errors import HirmError
from hirm.patch import Patch


@pytest.fixture(scope="module")
def pipe():
    return dummies.sd_pipeline()


def value_projection(pipe):
    return next(m for n, m in pipe.unet.named_modules() if n.endswith("attn2.to_v"))


def cross_attention_output(pipe, prompt):
    """What the UNet's first cross-attention value projection makes of the prompt's embeddings."""
    emb = pipe.text_encoder(pipe.tokenizer([prompt], padding="max_length", max_length=77,
                                           return_tensors="pt").input_ids)[0]
    return value_projection(pipe)(emb)


def test_ridge_edit_fits_the_keys_and_stays_near_w0():
    torch.manual_seed(0)
    w0 = torch.randn(6, 5)
    k, v = torch.randn(2, 5), torch.randn(2, 6)
    w = ridge_edit(w0, [(k, v, 1.0)], lamb=1e-6)
    assert torch.allclose(k @ w.T, v, atol=1e-4)
    w_big = ridge_edit(w0, [(k, v, 1.0)], lamb=1e6)
    assert torch.allclose(w_big, w0, atol=1e-3)


@pytest.mark.parametrize("group,include,exclude", [("xattn", "attn2", "attn1"), ("noxattn", "attn1", "attn2"),
                                                   ("selfattn", "attn1", "conv_in")])
def test_unet_parameter_groups(pipe, group, include, exclude):
    names = unet_parameter_names(pipe.unet, group)
    assert names and all(exclude not in n for n in names) and any(include in n for n in names)


@pytest.mark.parametrize("method", ["esd-x", "esd-u"])
def test_esd_changes_only_its_group_and_is_deterministic(pipe, method):
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    a = hirm.erase(pipe, "star", method=method, steps=3, ddim_steps=4, lr=1e-3, progress=False)
    b = hirm.erase(pipe, "star", method=method, steps=3, ddim_steps=4, lr=1e-3, progress=False)
    assert a.id == b.id and a.method == method and a.components == ["unet"]
    in_x = [".attn2." in k for k in a.tensors]
    assert all(in_x) if method == "esd-x" else not any(in_x)
    # the caller's model is untouched, and the patch really differs from it
    assert all(torch.equal(p, before[n]) for n, p in pipe.unet.named_parameters())
    assert any(not torch.equal(t, before[k.split("::")[1]]) for k, t in a.tensors.items())


def test_uce_maps_the_concept_to_the_guide_and_keeps_preserved_concepts(pipe):
    concept_before = cross_attention_output(pipe, "star")
    keep_before = cross_attention_output(pipe, "circle")
    patch = hirm.erase(pipe, "star", method="uce", preserve=("circle",), lamb=1e-3, progress=False)
    assert patch.components == ["unet"] and all("attn2.to_" in k for k in patch.tensors)
    k, g = aligned_pair(pipe, "star", "")
    proj = value_projection(pipe)
    with patch.applied(pipe):
        concept_after = cross_attention_output(pipe, "star")
        keep_after = cross_attention_output(pipe, "circle")
        mapped = proj(k)
    target, unedited = proj(g), proj(k)  # the original projections (patch removed)
    moved = (concept_after - concept_before).norm() / concept_before.norm()
    kept = (keep_after - keep_before).norm() / keep_before.norm()
    assert (mapped - target).norm() < 0.25 * (unedited - target).norm()
    assert moved > 2 * kept


@pytest.mark.parametrize("method", ["uce", "rece"])
def test_uce_erases_a_list_in_one_closed_form(pipe, method):
    concepts = ["star", "circle"]
    patch = hirm.erase(pipe, concepts, method=method, preserve=("heart",), lamb=1e-3, progress=False)
    assert patch.concepts == concepts and patch.config["preserve"] == ["heart"]
    proj = value_projection(pipe)
    pairs = [aligned_pair(pipe, c, "") for c in concepts]
    prompts = [*concepts, "heart"]
    with torch.no_grad():
        unedited = [(proj(k), proj(g)) for k, g in pairs]
        outputs_before = [cross_attention_output(pipe, p) for p in prompts]
        with patch.applied(pipe):
            mapped = [proj(k) for k, _ in pairs]
            outputs_after = [cross_attention_output(pipe, p) for p in prompts]
    near = 0.25 if method == "uce" else 0.4  # RECE also fits its adversarial embeddings: the concept's own less
    for after, (before, target) in zip(mapped, unedited, strict=True):  # each concept goes to the guide
        assert (after - target).norm() < near * (before - target).norm()
    moved = [float((a - b).norm() / b.norm()) for a, b in zip(outputs_after, outputs_before, strict=True)]
    assert min(moved[:2]) > 2 * moved[2]  # the preserved concept moves far less than either erased one
    # a one-concept list is the plain string, and the default preserve set leaves every erased concept out
    assert hirm.erase(pipe, ["star"], method=method, progress=False).id == hirm.erase(
        pipe, "star", method=method, progress=False).id


def test_quickfix_erases_a_list_in_one_closed_form(pipe):
    single = {c: hirm.erase(pipe, c, method="quickfix", progress=False) for c in ("star", "circle")}
    both = hirm.erase(pipe, ["star", "circle"], method="quickfix", progress=False)
    (name,) = both.tensors
    base = dict(pipe.text_encoder.named_parameters())[name.split("::")[1]].detach()
    assert both.concepts == ["star", "circle"]
    for patch in single.values():  # the joint edit moves the weights along both single edits
        delta = (patch.tensors[name] - base).flatten()
        assert torch.dot((both.tensors[name] - base).flatten(), delta) > 0.5 * delta.norm() ** 2


def test_rece_adds_rounds_and_differs_from_uce(pipe):
    uce = hirm.erase(pipe, "star", method="uce", progress=False)
    rece = hirm.erase(pipe, "star", method="rece", epochs=2, progress=False)
    assert rece.method == "rece" and rece.info["unet"]["adversarial_rounds"] == 2
    assert any(not torch.equal(uce.tensors[k], rece.tensors[k]) for k in uce.tensors)


def test_quickfix_edits_layer0_out_proj_only(pipe):
    patch = hirm.erase(pipe, "star", method="quickfix", progress=False)
    (name,) = patch.tensors
    assert name.startswith("text_encoder::") and name.endswith("encoder.layers.0.self_attn.out_proj.weight")


def test_combined_method_holds_both_edits_and_round_trips(pipe, tmp_path):
    patch = hirm.erase(pipe, "star", method="hirm-r+esd-x", steps=2, ddim_steps=3, progress=False)
    assert patch.method == "hirm-r+esd-x" and patch.components == ["text_encoder", "unet"]
    loaded = Patch.load(patch.save(tmp_path / "p.safetensors"))
    assert loaded.id == patch.id and set(loaded.config) == {"hirm-r", "esd-x"}
    unet_before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    with loaded.applied(pipe):
        assert any(not torch.equal(p, unet_before[n]) for n, p in pipe.unet.named_parameters())
    assert all(torch.equal(p, unet_before[n]) for n, p in pipe.unet.named_parameters())


def test_bad_method_and_options_are_clear_errors(pipe):
    with pytest.raises(HirmError, match="unknown method 'esd-z'"):
        hirm.erase(pipe, "star", method="hirm-r+esd-z")
    with pytest.raises(HirmError, match="no option 'target_norm'"):
        hirm.erase(pipe, "star", method="uce", target_norm=3.0)
    with pytest.raises(HirmError, match="pass the whole pipeline"):
        hirm.erase([dummies.text_encoder()], "star", method="esd-x")
    with pytest.raises(HirmError, match=r"Stable-Diffusion-1\.x/2\.x-style"):
        hirm.erase(dummies.sdxl_pipeline(), "star", method="uce")


def test_advunlearn_trains_only_the_text_encoder_and_restores_the_unet(pipe):
    unet_flags = {n: p.requires_grad for n, p in pipe.unet.named_parameters()}
    a = hirm.erase(pipe, "star", method="advunlearn", steps=2, attack_steps=2, ddim_steps=3, lr=1e-3,
                   retain_prompts=("a circle", "a red square"), progress=False)
    b = hirm.erase(pipe, "star", method="advunlearn", steps=2, attack_steps=2, ddim_steps=3, lr=1e-3,
                   retain_prompts=("a circle", "a red square"), progress=False)
    assert a.components == ["text_encoder"] and a.id == b.id
    assert {n: p.requires_grad for n, p in pipe.unet.named_parameters()} == unet_flags
    with a.applied(pipe):
        changed = cross_attention_output(pipe, "star")
    assert not torch.allclose(changed, cross_attention_output(pipe, "star"))


def test_advunlearn_default_retain_set_is_the_everyday_one_without_the_concept(pipe):
    # the concept was once read letter by letter: every everyday prompt has an "a", so the set came out empty
    patch = hirm.erase(pipe, "Monet", method="advunlearn", steps=1, attack_steps=1, ddim_steps=2, progress=False)
    retain = patch.config["retain_prompts"]
    assert len(retain) > 20 and not any("monet" in p.lower() for p in retain)


@pytest.fixture(scope="module")
def flux():
    return dummies.flux_pipeline()


@pytest.mark.parametrize("group,check", [
    ("xattn", lambda n: n.startswith("transformer_blocks.") and ".attn." in n),
    ("noxattn", lambda n: not (n.startswith("transformer_blocks.") and ".attn." in n)),
    ("selfattn", lambda n: n.startswith("single_transformer_blocks.") and ".attn." in n),
])
def test_transformer_parameter_groups(flux, group, check):
    names = transformer_parameter_names(flux.transformer, group)
    assert names and all(check(n) for n in names)
    if group == "noxattn":
        assert not any(n.startswith(("time_text_embed.", "context_embedder.", "proj_out.")) for n in names)


def test_esd_on_flux_trains_the_transformers_joint_attention_with_the_velocity_loss(flux):
    """ESD on a Flux pipeline: the same negative-guidance loss on the transformer's velocities."""
    from hirm.erase.denoiser import denoiser

    before = {n: p.detach().clone() for n, p in flux.transformer.named_parameters()}
    a = hirm.erase(flux, "star", method="esd-x", steps=3, ddim_steps=4, lr=1e-3, progress=False)
    b = hirm.erase(flux, "star", method="esd-x", steps=3, ddim_steps=4, lr=1e-3, progress=False)
    assert a.id == b.id and a.components == ["transformer"]
    assert {k.split("::")[1] for k in a.tensors} == set(transformer_parameter_names(flux.transformer, "xattn"))
    assert all(torch.equal(p, before[n]) for n, p in flux.transformer.named_parameters())
    # the patched transformer predicts another velocity for the concept at the same latent and time
    den = denoiser(flux, "esd-x")
    cond = den.condition(["star"])
    z, t = den.partly_denoised(cond, den.condition([""]), 4, 3.0, torch.Generator().manual_seed(0))
    plain = den.predict(z, t, cond)
    with a.applied(flux):
        erased = den.predict(z, t, cond)
    assert not torch.allclose(plain, erased)


def test_hirm_plus_esd_on_flux_edits_the_clip_encoder_and_the_transformer(flux):
    patch = hirm.erase(flux, "star", method="hirm-r+esd-x", steps=2, ddim_steps=3, progress=False)
    assert patch.components == ["text_encoder", "transformer"]
    with pytest.raises(HirmError, match="UNet of a Stable-Diffusion"):
        hirm.erase(flux, "star", method="uce", progress=False)


def test_fewshot_learns_from_an_image_folder_and_trains_only_its_text_encoder_set(pipe, tmp_path):
    from PIL import Image

    from hirm.erase.textenc import trainable_parameter_names

    rng = torch.Generator().manual_seed(0)
    for i in range(3):
        pixels = (torch.rand(20, 24, 3, generator=rng) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / f"star-{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    unet_flags = {n: p.requires_grad for n, p in pipe.unet.named_parameters()}
    kw = dict(method="fewshot", images=str(tmp_path), epochs=2, lr=1e-3, progress=False)
    a, b = hirm.erase(pipe, "star", **kw), hirm.erase(pipe, "star", **kw)
    (enc,) = hirm.find_text_encoders(pipe)
    allowed = {f"text_encoder::{n}" for n in trainable_parameter_names(enc, "mlp-final-attn")}
    assert a.id == b.id and a.components == ["text_encoder"] and set(a.tensors) <= allowed
    assert a.info["text_encoder"]["images"] == 3 and a.config["concept_type"] == "auto"
    assert {n: p.requires_grad for n, p in pipe.unet.named_parameters()} == unet_flags
    with a.applied(pipe):
        changed = cross_attention_output(pipe, "a photo of a star")
    assert not torch.allclose(changed, cross_attention_output(pipe, "a photo of a star"))
    style = hirm.erase(pipe, "star", kind="style", **kw)
    assert style.config["concept_type"] == "style" and style.id != a.id


def test_fewshot_without_images_is_a_clear_error(pipe, tmp_path):
    with pytest.raises(HirmError, match="images=DIR"):
        hirm.erase(pipe, "star", method="fewshot", progress=False)
    with pytest.raises(HirmError, match=r"no \.png/\.jpg/\.jpeg images"):
        hirm.erase(pipe, "star", method="fewshot", images=str(tmp_path), progress=False)
