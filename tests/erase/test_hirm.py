"""HiRM erasure on tiny random CLIP text encoders: what changes, where it moves, determinism."""

import contextlib
import functools

import pytest
import torch

import dummies
import hirm
from hirm.erase.hirm import random_target
from hirm.erase.textenc import representation, trainable_parameter_names
from hirm.errors import HirmError
from hirm.patch import SEP

# the paper's HiRM-R (hirm's default method `hirm` is tested at the end of this file)
erase_r = functools.partial(hirm.erase, method="hirm-r")


def _diff_names(a: torch.nn.Module, b: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, t in a.state_dict().items() if not torch.equal(t, b[n])}


def test_erase_changes_only_layer0_and_leaves_caller_model_untouched():
    enc = dummies.text_encoder()
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    patch = erase_r([enc], "a red star", steps=5, lr=1e-3, progress=False)
    assert _diff_names(enc.model, before) == set()  # erase returns a patch; the model is as it was
    names = {k.split(SEP, 1)[1] for k in patch.tensors}
    assert names and all(n.startswith("encoder.layers.0.") for n in names)
    assert not any("layer_norm" in n for n in names)
    assert {n.rsplit(".", 2)[-2] for n in names} == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    patch.apply([enc])
    changed = _diff_names(enc.model, before)
    assert changed == names  # every patched tensor moved, nothing else did


def test_the_key_bias_is_not_trained_as_no_loss_moves_it():
    """softmax ignores the q . b_k that the key bias adds to all of a query's scores: its gradient is rounding
    noise (which Adam would amplify into host-dependent steps), so HiRM leaves it out."""
    enc = dummies.text_encoder()
    patch = erase_r([enc], "a red star", steps=2, lr=1e-3, progress=False)
    assert not any(k.endswith("k_proj.bias") for k in patch.tensors)
    assert any(k.endswith("k_proj.weight") for k in patch.tensors)
    attn = enc.layers[0].self_attn
    enc.model.zero_grad()
    enc.model(input_ids=enc.tokenize(["a red star", "a cat"])).last_hidden_state.pow(2).sum().backward()
    assert attn.k_proj.bias.grad.norm() < 1e-5 * attn.q_proj.bias.grad.norm()


def test_supervised_representation_moves_toward_random_target():
    enc = dummies.text_encoder()
    patch = erase_r([enc], "a red star", steps=20, lr=1e-3, progress=False)
    info = patch.info["text_encoder"]
    assert info["loss_last"] < info["loss_first"]
    assert info["cos_to_target_after"] > info["cos_to_target_before"] + 0.05
    # re-measure independently of the info the patch reports
    ids = enc.tokenize(["a red star"])
    target = random_target((77, 32), 5000.0, 42)
    cos = torch.nn.functional.cosine_similarity
    h0 = representation(enc, ids, -1, "self_attn.out_proj").detach()
    with patch.applied([enc]):
        h1 = representation(enc, ids, -1, "self_attn.out_proj").detach()
    assert cos(h1.flatten(), target.flatten(), dim=0) > cos(h0.flatten(), target.flatten(), dim=0)


def test_hirm_s_moves_toward_semantic_target():
    enc = dummies.text_encoder()
    patch = erase_r([enc], "a red star", method="hirm-s", target="a blue circle", steps=20, lr=1e-3,
                       progress=False)
    info = patch.info["text_encoder"]
    assert patch.method == "hirm-s"
    assert info["cos_to_target_after"] > info["cos_to_target_before"]
    assert info["loss_last"] < info["loss_first"]


def test_same_seed_same_patch_other_seed_other_patch(tmp_path):
    a = erase_r([dummies.text_encoder()], "star", steps=3, seed=7, progress=False)
    b = erase_r([dummies.text_encoder()], "star", steps=3, seed=7, progress=False)
    c = erase_r([dummies.text_encoder()], "star", steps=3, seed=8, progress=False)
    a.save(tmp_path / "a.safetensors")
    b.save(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert a.id == b.id != c.id


def test_random_target_has_paper_scale():
    t = random_target((77, 768), 5000.0, 42)
    assert t.shape == (1, 77, 768)
    assert t.norm().item() == pytest.approx(5000.0, rel=1e-5)
    assert t.min() >= 0  # uniform [0, 1) as in the authors' code
    small = random_target((77, 256), 5000.0, 42)
    assert (small.pow(2).mean().sqrt() / t.pow(2).mean().sqrt()).item() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize(("layers", "expected"), [
    ("0", {0}), ("0,1", {0, 1}), ("first-attn", {0}), ("mlp-only", {0}), ("final-attn", {3}),
    ("attn-only", {0, 1, 2, 3}), ("mix-attn", {0, 3}), ("-1", {3}), ("mlp-final-attn", {0, 1, 2, 3}),
])
def test_layer_presets(layers, expected):
    enc = dummies.text_encoder()
    names = trainable_parameter_names(enc, layers)
    assert {int(n.split(".")[2]) for n in names} == expected
    if layers == "mlp-only":
        assert all(".mlp." in n for n in names)
    if layers == "mlp-final-attn":  # every MLP, attention only in the last layer
        assert {n.split(".")[2] for n in names if ".self_attn." in n} == {"3"}
        assert {n.split(".")[2] for n in names if ".mlp." in n} == {"0", "1", "2", "3"}


def test_prompt_set_from_templates_and_variants():
    patch = erase_r([dummies.text_encoder()], "Van Gogh", steps=2, templates=("{}", "a painting by {}"),
                       variants=("Vincent",), progress=False)
    assert patch.config["prompts"] == ["Van Gogh", "a painting by Van Gogh", "Vincent", "a painting by Vincent"]


def _cos_to(enc, patch, prompt: str, target: torch.Tensor) -> float:
    """Cosine of the prompt's supervised representation to `target`, with `patch` applied (None: the base)."""
    ids = enc.tokenize([prompt])
    with torch.no_grad(), (patch.applied([enc]) if patch is not None else contextlib.nullcontext()):
        h = representation(enc, ids, -1, "self_attn.out_proj")
    return float(torch.nn.functional.cosine_similarity(h.flatten(), target.flatten(), dim=0))


def test_several_concepts_in_one_optimisation_each_to_its_own_target():
    enc = dummies.text_encoder()
    one = erase_r([enc], "a red star", steps=3, lr=1e-3, progress=False)
    as_list = erase_r([enc], ["a red star"], steps=3, lr=1e-3, progress=False)
    assert one.id == as_list.id  # one concept: exactly the paper's loss
    both = erase_r([enc], ["a red star", "a blue circle"], steps=30, lr=1e-3, progress=False)
    assert both.concepts == ["a red star", "a blue circle"]
    for i, prompt in enumerate(both.concepts):  # one patch moves each concept toward its own target
        target = random_target((77, 32), 5000.0, 42 + i)
        assert _cos_to(enc, both, prompt, target) > _cos_to(enc, None, prompt, target) + 0.05
    sampled = [erase_r([enc], ["star", "circle", "heart"], steps=4, concepts_per_step=1, progress=False)
               for _ in range(2)]
    assert sampled[0].id == sampled[1].id != erase_r([enc], ["star", "circle", "heart"], steps=4,
                                                        progress=False).id


def test_sampled_concepts_are_built_each_step_at_the_base_weights():
    """concepts_per_step builds a step's concepts when drawn (bounded memory for long lists): each concept still
    goes to its own target, and its loss is scaled by its value at the base weights, not at the current ones
    (which would hold the scaled loss at loss_scale)."""
    enc = dummies.text_encoder()
    concepts = ["a red star", "a blue circle", "a green heart"]
    patch = erase_r([enc], concepts, steps=60, lr=1e-3, concepts_per_step=1, loss_scale=1000.0, progress=False)
    info = patch.info["text_encoder"]
    assert info["measured_on_concepts"] == 1
    # at the current weights each drawn concept's scaled loss would be loss_scale at every step
    assert info["loss_first"] == pytest.approx(1000.0) and info["loss_last"] < 0.98 * info["loss_first"]
    for i, prompt in enumerate(concepts):
        target = random_target((77, 32), 5000.0, 42 + i)
        assert _cos_to(enc, patch, prompt, target) > _cos_to(enc, None, prompt, target) + 0.05
    # hirm's default recipe samples the same way (its targets: each prompt with the concept's words left out)
    default = hirm.erase([enc], concepts, steps=2, concepts_per_step=2, progress=False)
    assert default.info["text_encoder"]["loss_first"] == pytest.approx(1000.0)


def test_several_concepts_only_for_methods_that_erase_lists():
    with pytest.raises(HirmError, match="one concept per run"):
        erase_r([dummies.text_encoder()], ["star", "circle"], method="esd-x", progress=False)
    with pytest.raises(HirmError, match="give each its own"):
        erase_r([dummies.text_encoder()], ["star", "circle"], variants=("pentagram",), progress=False)


def test_robust_rounds_train_on_the_prompts_that_undo_the_erasure():
    enc = dummies.text_encoder()
    kw = {"steps": 30, "lr": 1e-3, "progress": False, "robust_steps": 10, "robust_prompts": 3, "robust_tokens": 2}
    plain = erase_r([enc], "a red star", **kw)
    robust = erase_r([enc], "a red star", robust_rounds=1, **kw)
    found = robust.info["text_encoder"]["adversarial_prompts"]
    sources = robust.config["prompts"]  # the concept and its 2 typos
    assert len(sources) == 3 and len(found) == 3 and all(any(p.endswith(s) for s in sources) for p in found)
    target = random_target((77, 32), 5000.0, 42)
    gain = [_cos_to(enc, robust, p, target) - _cos_to(enc, plain, p, target) for p in found]
    assert sum(gain) > 0  # the prompts found against round 0 are misdirected by the final patch

    # in place of the concept's words: prompts without its name that the final patch misdirects too
    replaced = erase_r([enc], "a red star", robust_rounds=1, robust_slots="replace", **kw)
    found = replaced.info["text_encoder"]["adversarial_prompts"]
    assert len(found) == 3 and not any("star" in p for p in found)
    assert sum(_cos_to(enc, replaced, p, target) - _cos_to(enc, plain, p, target) for p in found) > 0
    both = erase_r([enc], "a red star", robust_rounds=1, robust_slots="both", **kw)
    assert len(both.info["text_encoder"]["adversarial_prompts"]) == 6
    with pytest.raises(HirmError, match="positions=all"):
        erase_r([enc], "a red star", robust_rounds=1, robust_slots="replace", positions="concept", **kw)


def test_kind_presets_follow_paper():
    assert hirm.make_config("hirm-r", kind="object").steps == 15
    assert hirm.make_config("hirm-r", kind="nudity").lr == 1e-4
    assert hirm.make_config("hirm-r", kind="style", steps=3).steps == 3  # explicit beats preset
    with pytest.raises(HirmError, match="drop --kind"):
        hirm.make_config("hirm", kind="object")


def test_an_override_never_silently_loses_to_a_methods_fixed_field():
    assert hirm.make_config("rece", epochs=5).epochs == 5
    assert hirm.make_config("uce", epochs=0).epochs == 0  # the fixed value itself is fine
    with pytest.raises(HirmError, match="uce fixes epochs=0"):
        hirm.make_config("uce", epochs=3)
    with pytest.raises(HirmError, match="hirm-r fixes variant='r'"):
        hirm.make_config("hirm-r", variant="s")


@pytest.mark.parametrize(("factory", "expected"), [
    ("sd_pipeline", ["text_encoder"]),
    ("sdxl_pipeline", ["text_encoder", "text_encoder_2"]),
    ("sd3_pipeline", ["text_encoder", "text_encoder_2"]),
    ("flux_pipeline", ["text_encoder"]),
])
def test_every_clip_encoder_of_each_pipeline_is_found_and_t5_left_alone(factory, expected):
    pipe = getattr(dummies, factory)()
    assert [e.name for e in hirm.find_text_encoders(pipe)] == expected
    t5 = {k: v.clone() for k, v in pipe.components.get("text_encoder_3", pipe.components.get("text_encoder_2"))
          .state_dict().items()} if factory in ("sd3_pipeline", "flux_pipeline") else None
    patch = erase_r(pipe, "a red star", steps=2, lr=1e-3, progress=False)
    assert patch.components == expected
    patch.apply(pipe)
    if t5 is not None:
        t5_model = pipe.components["text_encoder_3" if factory == "sd3_pipeline" else "text_encoder_2"]
        assert all(torch.equal(v, t5[k]) for k, v in t5_model.state_dict().items())


def test_encoder_choice():
    pipe = dummies.sdxl_pipeline()
    patch = erase_r(pipe, "star", encoder="text_encoder_2", steps=2, progress=False)
    assert patch.components == ["text_encoder_2"]
    with pytest.raises(hirm.HirmError, match="no text encoder named 'text_encoder_9'"):
        erase_r(pipe, "star", encoder="text_encoder_9", steps=2, progress=False)


def test_encoder_all_misdirects_flux_t5_too():
    """--encoder all: the same recipe on Flux's T5 (its block 0 trained, its final attention output moved)."""
    from hirm.erase.textenc import representation

    pipe = dummies.flux_pipeline()
    t5 = hirm.find_text_encoders(pipe, "text_encoder_2")[0]
    ids = t5.tokenize(["a red star"])
    before = representation(t5, ids, -1, "self_attn.out_proj").clone()
    patch = erase_r(pipe, "a red star", encoder="all", steps=5, lr=1e-2, progress=False)
    assert patch.components == ["text_encoder", "text_encoder_2"]
    t5_names = patch.component_tensors("text_encoder_2")
    assert t5_names and all(n.startswith("encoder.block.0.") for n in t5_names)
    assert patch.info["text_encoder_2"]["loss_last"] < patch.info["text_encoder_2"]["loss_first"]
    with patch.applied(pipe):
        after = representation(t5, ids, -1, "self_attn.out_proj")
    assert not torch.allclose(before, after)
    with pytest.raises(hirm.HirmError, match="CLIP encoders only"):
        erase_r(pipe, "a red star", method="quickfix", encoder="all", progress=False)


def test_patched_pipeline_changes_generation_and_remove_restores():
    from hirm.generate import sample

    pipe = dummies.sd_pipeline()
    base = sample(pipe, ["a red star"], steps=2)[0]
    patch = erase_r(pipe, "a red star", steps=10, lr=1e-3, progress=False)
    with patch.applied(pipe):
        erased = sample(pipe, ["a red star"], steps=2)[0]
    again = sample(pipe, ["a red star"], steps=2)[0]
    assert list(base.getdata()) != list(erased.getdata())
    assert list(base.getdata()) == list(again.getdata())


def test_hirm_s_safe_direction_from_prompt_pairs():
    enc = dummies.text_encoder()
    pairs = (("a red star on a cat", "a cat"), ("a red star photo", "a photo"))
    patch = erase_r([enc], "a red star", method="hirm-s", safe_pairs=pairs, steps=20, lr=1e-3, progress=False)
    info = patch.info["text_encoder"]
    assert info["cos_to_target_after"] > info["cos_to_target_before"]
    assert [list(p) for p in patch.config["safe_pairs"]] == [list(p) for p in pairs]


def test_nudity_kind_brings_safe_pairs_and_paper_lr():
    cfg = hirm.make_config("hirm-s", kind="nudity")
    assert cfg.lr == 1e-4 and cfg.steps == 50 and len(cfg.safe_pairs) >= 4


@pytest.mark.parametrize("retain_at", ["final", "trained"])
def test_retain_term_keeps_unrelated_prompts_closer(retain_at):
    from hirm.eval.locality import final_states

    enc = dummies.text_encoder()
    others = ["a blue circle", "a photo of a cat", "a red painting"]
    kw = {"steps": 20, "lr": 1e-3, "progress": False}
    free = erase_r([enc], "a red star", **kw)
    kept = erase_r([enc], "a red star", retain_weight=1e4, retain_prompts=tuple(others), retain_at=retain_at, **kw)
    assert kept.config["retain_at"] == retain_at
    base, _ = final_states(enc, others)

    def drift(patch):
        with patch.applied([enc]):
            moved, _ = final_states(enc, others)
        return float((moved - base).norm() / base.norm())

    assert drift(kept) < 0.5 * drift(free)


def test_default_retain_prompts_exclude_the_concept():
    from hirm.erase.prompts import default_retain_prompts

    prompts = default_retain_prompts([dummies.text_encoder()], ["Monet"])
    assert prompts and not any("monet" in p.lower() for p in prompts)


@pytest.mark.parametrize(("positions", "expected"), [
    ("all", list(range(77))), ("no-bos", list(range(1, 77))),
    ("concept", list(range(3, 77))),  # <bos> a photo [red star] <eos> ...: from "red" on
    ("concept+eos", [3, 4, 5]),
])
def test_supervised_positions(positions, expected):
    from hirm.erase.hirm import supervised_positions

    enc = dummies.text_encoder()
    ids = enc.tokenize(["a photo red star"])
    mask = supervised_positions(enc, ids, ["red star"], positions)
    assert mask[0, :, 0].nonzero().flatten().tolist() == expected
    patch = erase_r([enc], "red star", templates=("a photo {}",), positions=positions, steps=1, progress=False)
    assert patch.config["positions"] == positions


def test_representation_stops_the_forward_at_the_supervised_module():
    """The supervised output equals the full forward's, and nothing after it (the last MLP) is computed."""
    enc = dummies.text_encoder(seed=0)
    ids = enc.tokenize(["a red star", "a blue moon"])
    layers = getattr(enc.model, "text_model", enc.model).encoder.layers
    seen, mlp_calls = [], []
    h1 = layers[-1].self_attn.out_proj.register_forward_hook(lambda _m, _i, out: seen.append(out))
    h2 = layers[-1].mlp.register_forward_hook(lambda *_: mlp_calls.append(1))
    try:
        enc.model(input_ids=ids)
        assert len(mlp_calls) == 1
        early = representation(enc, ids, -1, "self_attn.out_proj")
    finally:
        h1.remove()
        h2.remove()
    assert len(mlp_calls) == 1 and torch.equal(early, seen[0])


def _projection(enc, patch, prompts: list[str], unnamed: list[str]) -> torch.Tensor:
    """Each prompt's final hidden states, with `patch` applied, projected on its concept direction (base
    prompt minus the same prompt with the concept left out): 1 = untouched, 0 = as if the word were not there."""
    from hirm.eval.locality import final_states

    base, _ = final_states(enc, prompts)
    left_out, _ = final_states(enc, unnamed)
    with patch.applied([enc]):
        moved, _ = final_states(enc, prompts)
    direction = base - left_out
    return ((moved - left_out) * direction).sum((1, 2)) / (direction ** 2).sum((1, 2))


def test_replace_concept_leaves_out_or_replaces_the_concept():
    from hirm.erase.prompts import replace_concept

    assert replace_concept("a photo of Van Gogh", ["Van Gogh", "Gogh"]) == "a photo of"
    assert replace_concept("star", ["star"]) == ""
    assert replace_concept("a star image, high quality", ["star"], "hexagon") == "a hexagon image, high quality"
    with pytest.raises(HirmError, match="does not contain"):
        replace_concept("a cat", ["star"])


def test_away_term_erases_until_every_prompt_is_past_its_word_left_out_point():
    enc = dummies.text_encoder()
    templates = ("{}", "a {}", "a photo of a {}")
    prompts = [t.format("red star") for t in templates]
    unnamed = ["", "a", "a photo of a"]
    kw = {"templates": templates, "lr": 1e-3, "progress": False}
    plain = erase_r([enc], "red star", steps=30, **kw)
    away = erase_r([enc], "red star", steps=300, away_weight=1000, away_below=-0.2, **kw)
    info = away.info["text_encoder"]
    assert info["steps"] < 300  # the stopping rule ended it, not the step budget
    assert info["projection_max"] <= -0.2
    # re-measured independently of the patch's own report
    assert bool((_projection(enc, away, prompts, unnamed) <= -0.2 + 1e-4).all())
    assert bool((_projection(enc, plain, prompts, unnamed) > 0).all())  # the random target alone keeps the concept


def test_away_term_stops_at_the_step_budget_when_the_rule_does_not_hold():
    patch = erase_r([dummies.text_encoder()], "star", steps=2, lr=1e-5, away_weight=1.0, progress=False)
    assert patch.info["text_encoder"]["steps"] == 2
    assert patch.info["text_encoder"]["projection_max"] > 0


def test_preserved_concept_keeps_its_representation():
    # the shipped MiniCanvas encoder: a random tiny encoder gives every prompt nearly the same states, so nothing
    # there can move one prompt and keep another
    from hirm.encoders import load_text_encoders
    from hirm.eval.locality import final_states
    from hirm.minicanvas import registry

    enc = load_text_encoders(registry.path("minicanvas"))[0]
    templates = ("{}", "a {}", "a photo of a {}")
    kw = {"templates": templates, "steps": 20, "lr": 1e-3, "retain_weight": 1e3,
          "retain_prompts": ("a blue circle", "a striped square"), "progress": False}

    def drift(patch, concept):
        prompts = [t.format(concept) for t in templates]
        base, _ = final_states(enc, prompts)
        with patch.applied([enc]):
            moved, _ = final_states(enc, prompts)
        return float((moved - base).norm() / base.norm())

    free = erase_r([enc], "star", **kw)
    kept = erase_r([enc], "star", preserve=("hexagon",), **kw)
    assert list(kept.config["preserve"]) == ["hexagon"]
    assert drift(kept, "hexagon") < 0.25 < drift(free, "hexagon")  # measured 0.15 / 0.81
    firmer = erase_r([enc], "star", preserve=("hexagon",), preserve_weight=1e4, **kw)
    assert drift(firmer, "hexagon") < drift(kept, "hexagon")  # its own weight, 10x the retain term's
    assert drift(kept, "star") > 3 * drift(kept, "hexagon")  # the concept still moves (0.60)


@pytest.mark.parametrize("per_step", [0, 1])
def test_default_method_moves_every_concept_of_a_list_and_keeps_a_preserved_one(per_step):
    # hirm's default recipe on a list, all concepts each step (0) or one drawn per step: each concept's prompts
    # move, the preserved concept's stay (the MiniCanvas encoder, as above)
    from hirm.encoders import load_text_encoders
    from hirm.eval.locality import final_states
    from hirm.minicanvas import registry

    enc = load_text_encoders(registry.path("minicanvas"))[0]
    templates = ("{}", "a {}", "a photo of a {}")
    patch = hirm.erase([enc], ["star", "striped"], preserve=("hexagon",), templates=templates, steps=30,
                       context_prompts=0, concepts_per_step=per_step, progress=False,
                       retain_prompts=("a blue circle", "a checkered square", "a heart in neon glow"))

    def drift(concept):
        prompts = [t.format(concept) for t in templates]
        base, _ = final_states(enc, prompts)
        with patch.applied([enc]):
            moved, _ = final_states(enc, prompts)
        return float((moved - base).norm() / base.norm())

    kept = drift("hexagon")  # measured 0.09 / 0.10; without --preserve 0.74 / 0.88
    assert kept < 0.25 and drift("star") > 3 * kept and drift("striped") > 3 * kept  # 1.2-1.4


def test_preserve_needs_the_retain_term():
    with pytest.raises(HirmError, match="--preserve"):
        erase_r([dummies.text_encoder()], "star", preserve=("circle",), paper_defaults=True, progress=False)


# hirm's default method: HiRM with each prompt's own concept-free version as the target (variant "u")


def test_unnamed_target_is_the_prompt_without_the_concept_pushed_margin_further():
    from hirm.erase import make_config
    from hirm.erase.hirm import PromptSet

    enc = dummies.text_encoder()
    prompts, names = [["a red star", "a photo of a red star"]], [["red star"]]
    unnamed = representation(enc, enc.tokenize(["a", "a photo of a"]), -1, "final")
    before = representation(enc, enc.tokenize(prompts[0]), -1, "final")
    for margin in (0.0, 1.0):
        config = make_config("hirm", margin=margin, context_prompts=0, retain_weight=0.0)
        batch = PromptSet.build(enc, prompts, names, config)
        torch.testing.assert_close(batch.target, unnamed - margin * (before - unnamed))
        assert torch.allclose(batch.projection(batch.target), torch.full((2,), -margin), atol=1e-4)


def test_target_replaces_the_concept_in_each_prompt():
    from hirm.erase import make_config
    from hirm.erase.hirm import PromptSet

    enc = dummies.text_encoder()
    prompts, names = [["a red star", "a photo of a red star"]], [["red star"]]
    retargeted = representation(enc, enc.tokenize(["a hexagon", "a photo of a hexagon"]), -1, "final")
    before = representation(enc, enc.tokenize(prompts[0]), -1, "final")
    config = make_config("hirm", target="hexagon", margin=0.5, context_prompts=0, retain_weight=0.0)
    torch.testing.assert_close(PromptSet.build(enc, prompts, names, config).target,
                               retargeted - 0.5 * (before - retargeted))


def test_target_concept_draws_the_prompts_to_it():
    # on the shipped MiniCanvas encoder: unseen star prompts end far nearer the same prompts with "hexagon" than
    # the originals
    from hirm.encoders import load_text_encoders
    from hirm.eval.locality import final_states
    from hirm.minicanvas import registry

    enc = load_text_encoders(registry.path("minicanvas"))[0]
    patch = hirm.erase([enc], "star", target="hexagon", margin=0.0, steps=20, progress=False)
    assert patch.config["target"] == "hexagon"
    unseen = ["a big star on a grey background", "a small yellow star, watercolor style"]
    base, _ = final_states(enc, unseen)
    wanted, _ = final_states(enc, [p.replace("star", "hexagon") for p in unseen])
    with patch.applied([enc]):
        moved, _ = final_states(enc, unseen)
    to_wanted, to_base = (moved - wanted).flatten(1).norm(dim=1), (moved - base).flatten(1).norm(dim=1)
    # measured 0.32 / 0.26 vs 1.02 / 1.03 of the base-to-hexagon distance; with no target 0.88 / 0.89 vs 0.86 / 0.82
    assert bool((to_wanted < 0.5 * to_base).all()), (to_wanted, to_base)


def test_context_prompts_join_the_concept_with_seeded_retain_prompts():
    from hirm.erase.hirm import HiRMConfig
    from hirm.erase.prompts import context_templates

    retain = tuple(f"prompt {i}" for i in range(20))
    templates = context_templates(retain, 4, seed=1)
    assert templates == context_templates(retain, 4, seed=1)  # seeded
    assert len(templates) == 4 and all(t.count("{}") == 1 for t in templates)
    assert [t.startswith("a {}, ") for t in templates] == [True, True, False, False]
    assert context_templates(retain, 4, seed=2) != templates
    with pytest.raises(HirmError, match="retain prompts"):
        HiRMConfig(context_prompts=4).validate()


def test_default_method_moves_unseen_prompts_past_the_unnamed_point_and_keeps_others():
    # the shipped MiniCanvas encoder (a random tiny one gives every prompt nearly the same states): prompts never
    # trained on move past the point where the concept's word is left out, others stay near where they were
    from hirm.encoders import load_text_encoders
    from hirm.minicanvas import registry

    enc = load_text_encoders(registry.path("minicanvas"))[0]
    patch = hirm.erase([enc], "star", steps=20, progress=False)
    assert patch.method == "hirm" and patch.config["variant"] == "u"
    assert len(patch.config["prompts"]) == 16  # 8 generic templates + 8 retain prompts around the concept
    assert patch.info["text_encoder"]["projection_max"] < 0.5
    unseen = ["a big star on a grey background", "a small yellow star, watercolor style"]
    projection = _projection(enc, patch, unseen, ["a big on a grey background", "a small yellow, watercolor style"])
    # 1 before erasure; measured -0.04 / -0.31, and 0.37 / 0.29 for HiRM-R with hirm's MiniCanvas recipe (50 steps)
    assert bool((projection < 0.1).all()), projection

    def drift(prompts):
        from hirm.eval.locality import final_states

        base, _ = final_states(enc, prompts)
        with patch.applied([enc]):
            moved, _ = final_states(enc, prompts)
        return float((moved - base).norm() / base.norm())

    others = ["a big circle on a grey background", "a small yellow heart, watercolor style"]
    assert drift(others) < 0.5 * drift(unseen)  # measured 0.22 vs 0.85


def test_default_method_takes_several_concepts_and_robust_rounds():
    enc = dummies.text_encoder()
    both = hirm.erase([enc], ["red star", "blue circle"], steps=3, progress=False)
    assert both.method == "hirm" and both.concepts == ["red star", "blue circle"]
    assert len(both.config["prompts"]) == 2 * 16  # each concept in the 8 generic and 8 context templates
    robust = hirm.erase([enc], "red star", steps=2, robust_rounds=1, robust_steps=2, progress=False)
    found = robust.info["text_encoder"]["adversarial_prompts"]
    assert found and all("red star" in p for p in found)  # prefix slots: each keeps the concept to leave out
    with pytest.raises(HirmError, match="robust_slots prefix"):
        hirm.erase([enc], "red star", robust_rounds=1, robust_slots="replace", progress=False)


def test_sequence_length_computes_only_the_leading_positions_and_keeps_them_exact():
    """CLIP's causal mask: a prompt's states at its first L positions do not depend on what follows, so the
    speed option `sequence_length` trains on exactly the states a full-length pass gives there."""
    from hirm.erase.hirm import HiRMConfig, _sequence_length, _tokenize

    enc = dummies.text_encoder()
    prompts = ["a red star", "a photo of a red star on a table"]
    length = _sequence_length(enc, prompts, HiRMConfig(sequence_length=4))
    longest = max(len(enc.tokenizer(p)["input_ids"]) for p in prompts)
    assert length == longest  # never shorter than the longest prompt
    assert _sequence_length(enc, prompts, HiRMConfig()) is None
    short, full = _tokenize(enc, prompts, False, length), enc.tokenize(prompts)
    assert short.shape == (2, length)
    with torch.no_grad():
        a = enc.model(input_ids=short).last_hidden_state
        b = enc.model(input_ids=full).last_hidden_state[:, :length]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_speed_options_validated():
    with pytest.raises(HirmError, match="retain_per_step -1"):
        erase_r([dummies.text_encoder()], "a red star", steps=1, retain_per_step=-1, progress=False)


@pytest.mark.parametrize(("layers", "deepest"), [("first-attn", 0), ("final-attn", 3), ("0,1", 1), ("mlp-only", 0)])
def test_deepest_trained_layer(layers, deepest):
    from hirm.erase.textenc import deepest_trained_layer

    assert deepest_trained_layer(dummies.text_encoder(), layers) == deepest


def test_retain_at_trained_holds_the_trained_layers_output_and_computes_nothing_above_it():
    """retain_at=trained anchors the retain prompts at layer 0's output (what the frozen layers above turn into
    the final states): the anchor forward never runs layer 1 (that the term keeps prompts in place is
    test_retain_term_keeps_unrelated_prompts_closer)."""
    from hirm.erase.hirm import HiRMConfig, anchor_states

    enc = dummies.text_encoder()
    ids = enc.tokenize(["a blue circle", "a red painting"])
    calls = []
    hook = enc.layers[1].register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            anchored = anchor_states(enc, ids, HiRMConfig(retain_at="trained"))
        assert not calls
        assert torch.equal(anchored, representation(enc, ids, 0, "output"))
        with torch.no_grad():
            final = anchor_states(enc, ids, HiRMConfig())
        assert calls and torch.equal(final, enc.model(input_ids=ids).last_hidden_state)
    finally:
        hook.remove()
    with pytest.raises(HirmError, match="retain_at 'middle'"):
        erase_r([enc], "a red star", steps=1, retain_at="middle", progress=False)
