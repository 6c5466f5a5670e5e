"""`hirm export`: a patch as the patched CLIP encoders alone (ComfyUI's layout) or as a text-encoder LoRA, each
loaded back by the consumer's own loader where it is installable here (transformers, diffusers + peft)."""

import pytest
import torch
from safetensors import safe_open
from transformers import CLIPTextModel, CLIPTextModelWithProjection
from typer.testing import CliRunner

import dummies
import hirm
from hirm.encoders import find_text_encoders
from hirm.errors import HirmError
from hirm.eval.locality import final_states
from hirm.export import export_clip, export_lora, lora_prefixes, low_rank, read_export_metadata

PROMPTS = ["a photo of a cat", "a red star", "a city at night"]


def states(pipe, name: str = "text_encoder") -> torch.Tensor:
    enc = next(e for e in find_text_encoders(pipe, which="all") if e.name == name)
    with torch.no_grad():
        return final_states(enc, PROMPTS)[0]


@pytest.fixture(scope="module")
def sdxl_patch():
    pipe = dummies.sdxl_pipeline()
    return hirm.erase(pipe, "cat", method="hirm-r", steps=3, progress=False)


def test_clip_export_is_the_patched_encoder_in_transformers_layout(tmp_path, sdxl_patch):
    pipe = dummies.sdxl_pipeline()
    result = export_clip(sdxl_patch, find_text_encoders(pipe), tmp_path / "clip")
    assert sorted(f.name for f in result.files) == ["text_encoder.safetensors", "text_encoder_2.safetensors"]
    with sdxl_patch.applied(pipe):
        want = {n: states(pipe, n) for n in ("text_encoder", "text_encoder_2")}
    for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        file = tmp_path / "clip" / f"{name}.safetensors"
        with safe_open(str(file), "pt") as f:
            keys, meta = set(f.keys()), f.metadata()
        # the key layout ComfyUI's CLIPLoader detects and reads (and transformers' files keep)
        assert "text_model.encoder.layers.0.mlp.fc1.weight" in keys and "text_model.final_layer_norm.weight" in keys
        assert ("text_projection.weight" in keys) == (cls is CLIPTextModelWithProjection)
        assert meta["format"] == "pt"
        info = read_export_metadata(file)
        assert info["patch"]["fingerprints"] == sdxl_patch.fingerprints and info["export"]["component"] == name
        # loaded back by transformers from the file alone, it encodes as the patched pipeline does
        folder = tmp_path / f"load-{name}"
        getattr(pipe, name).config.save_pretrained(folder)
        file.rename(folder / "model.safetensors")
        loaded = cls.from_pretrained(folder).eval()
        fresh = dummies.sdxl_pipeline()
        fresh.register_modules(**{name: loaded})
        assert torch.allclose(states(fresh, name), want[name], atol=1e-5)
    assert not torch.allclose(want["text_encoder"], states(pipe))  # the export is not the base encoder


def test_export_refuses_other_weights_and_writes_nothing(tmp_path, sdxl_patch):
    other = dummies.sdxl_pipeline(seed=7)
    with pytest.raises(HirmError, match="fingerprint"):
        export_clip(sdxl_patch, find_text_encoders(other), tmp_path / "clip")
    with pytest.raises(HirmError, match="fingerprint"):
        export_lora(sdxl_patch, find_text_encoders(other), ["text_encoder", "text_encoder_2"],
                    tmp_path / "l.safetensors")
    assert not any(tmp_path.iterdir())


def test_low_rank_is_the_truncated_svd():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(12, 5, generator=g) @ torch.randn(5, 9, generator=g)  # rank 5
    up, down = low_rank(delta, 5)
    assert up.shape == (12, 5) and down.shape == (5, 9)
    assert torch.allclose(up @ down, delta, atol=1e-4)
    errors = [float((delta - u @ d).norm()) for u, d in (low_rank(delta, r) for r in (1, 2, 4))]
    assert errors[0] > errors[1] > errors[2] > 0


def test_kohya_and_diffusers_prefixes():
    assert lora_prefixes(["text_encoder"], ["text_encoder"], "kohya") == {"text_encoder": "lora_te_"}
    both = ["text_encoder", "text_encoder_2"]
    assert lora_prefixes(both, both, "kohya") == {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    assert lora_prefixes(["text_encoder"], ["text_encoder", "text_encoder_2"], "diffusers") == {
        "text_encoder": "text_encoder."}


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_lora_loads_in_diffusers_and_at_full_rank_is_the_patch(tmp_path, layout):
    """Without bias changes and at a rank that covers every weight change, the LoRA is the patch; diffusers'
    `load_lora_weights` (peft) reads both key layouts."""
    pipe = dummies.sdxl_pipeline()
    patch = hirm.erase(pipe, "cat", method="hirm-r", steps=3, progress=False, train_biases=False)
    out = tmp_path / "cat-lora.safetensors"
    result = export_lora(patch, find_text_encoders(pipe), ["text_encoder", "text_encoder_2"], out, rank=64,
                         layout=layout)
    assert all(i["weight_error"] < 1e-5 and not i["dropped"] for i in result.info.values())
    with safe_open(str(out), "pt") as f:
        keys = set(f.keys())
    first = ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" if layout == "kohya" else
             "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight")
    assert first in keys
    with patch.applied(pipe):
        want = {n: states(pipe, n) for n in ("text_encoder", "text_encoder_2")}
    fresh = dummies.sdxl_pipeline()
    fresh.load_lora_weights(str(out))
    for name in want:
        assert torch.allclose(states(fresh, name), want[name], atol=1e-4), name


def test_low_rank_lora_reports_what_it_misses(tmp_path, sdxl_patch):
    pipe = dummies.sdxl_pipeline()
    low = export_lora(sdxl_patch, find_text_encoders(pipe), ["text_encoder", "text_encoder_2"],
                      tmp_path / "r1.safetensors", rank=1).info["text_encoder"]
    high = export_lora(sdxl_patch, find_text_encoders(pipe), ["text_encoder", "text_encoder_2"],
                       tmp_path / "r32.safetensors", rank=32).info["text_encoder"]
    assert low["weight_error"] > high["weight_error"]
    assert low["dropped"] and all(n.endswith("bias") for n in low["dropped"])  # the patch trained biases
    assert high["representation_error_concept"] >= 0 and high["representation_error_without_biases"] > 0
    fresh = dummies.sdxl_pipeline()
    fresh.load_lora_weights(str(tmp_path / "r1.safetensors"))  # a rank-1 file loads as well


def test_export_cli(tmp_path):
    from hirm.cli import app

    runner = CliRunner()
    folder = tmp_path / "sd"
    dummies.sd_pipeline().save_pretrained(folder)
    patch = tmp_path / "p.safetensors"
    assert runner.invoke(app, ["erase", "--model", str(folder), "--concept", "cat", "--out", str(patch),
                               "--steps", "2"]).exit_code == 0
    r = runner.invoke(app, ["export", str(patch), "--model", str(folder), "--format", "lora", "--rank", "4",
                            "--out", str(tmp_path / "l.safetensors")])
    assert r.exit_code == 0, r.output
    assert "rank 4" in r.output and "bias changes left out" in r.output
    meta = read_export_metadata(tmp_path / "l.safetensors")
    assert meta["export"] == {"format": "lora", "layout": "kohya", "rank": 4, "components": ["text_encoder"]}
    r = runner.invoke(app, ["export", str(patch), "--model", str(folder), "--out", str(tmp_path / "clip")])
    assert r.exit_code == 0, r.output
    assert read_export_metadata(tmp_path / "clip" / "text_encoder.safetensors")["export"]["format"] == "clip"
    for args, message in ((["--format", "ckpt"], "--format 'ckpt': use one of clip, lora, checkpoint"),
                          (["--format", "lora", "--out", str(tmp_path / "x.pt")], "a lora is a safetensors file"),
                          (["--dtype", "float8"], "--dtype 'float8'")):
        base = ["export", str(patch), "--model", str(folder), "--out", str(tmp_path / "new")]
        r = runner.invoke(app, base[:-2] + args if "--out" in args else base + args)
        assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "new").exists() and not (tmp_path / "x.pt").exists()


def test_export_of_a_two_half_patch_writes_its_text_half_and_says_so(tmp_path, caplog):
    """A --robust patch also edits the UNet, which none of the formats holds: the export writes the text half
    (exactly) and logs what it left out; a patch with no text-encoder edit is refused in one line."""
    from safetensors.torch import load_file

    from hirm.cli import app

    pipe = dummies.sd_pipeline()
    patch = hirm.erase(pipe, "cat", robust=True, steps=2, progress=False)
    assert set(patch.components) == {"text_encoder", "unet"}
    with caplog.at_level("WARNING", logger="hirm.export"):
        export_clip(patch, find_text_encoders(pipe), tmp_path / "clip")
    assert "unet edit is not in this export" in caplog.text
    with patch.only(["text_encoder"]).applied(pipe):
        want = states(pipe)
    written = load_file(str(tmp_path / "clip" / "text_encoder.safetensors"))
    written = {k.removeprefix("text_model."): v for k, v in written.items()}
    fresh = dummies.sd_pipeline()
    fresh.text_encoder.load_state_dict(written)
    assert torch.allclose(states(fresh), want, atol=1e-6)
    folder = tmp_path / "sd"
    dummies.sd_pipeline().save_pretrained(folder)
    hirm.erase(pipe, "cat", method="uce", progress=False).save(tmp_path / "uce.safetensors")
    r = CliRunner().invoke(app, ["export", str(tmp_path / "uce.safetensors"), "--model", str(folder), "--out",
                                 str(tmp_path / "none")])
    assert r.exit_code == 2 and "edits no text encoder (it edits unet)" in r.output, r.output
    assert not (tmp_path / "none").exists()


def test_erase_as_a_lora_is_a_low_rank_patch_that_exports_exactly(tmp_path):
    """`--lora-rank`: peft adapters on the trained weights; the patch changes each weight by rank <= R and no
    bias, the model is left as it was (no adapter modules, same weights), the same seed gives the same patch,
    and the LoRA export at that rank is exact."""
    from hirm.patch import fingerprint

    pipe = dummies.sdxl_pipeline()
    before = {n: fingerprint(getattr(pipe, n)) for n in ("text_encoder", "text_encoder_2")}
    types = {n: type(m) for n, m in pipe.text_encoder.named_modules()}
    patch = hirm.erase(pipe, "cat", method="hirm-r", steps=3, lr=1e-2, progress=False, lora_rank=2)
    again = hirm.erase(pipe, "cat", method="hirm-r", steps=3, lr=1e-2, progress=False, lora_rank=2)
    assert patch.id == again.id
    assert {n: fingerprint(getattr(pipe, n)) for n in before} == before
    assert {n: type(m) for n, m in pipe.text_encoder.named_modules()} == types  # adapters unloaded
    assert patch.tensors and not any(k.endswith(".bias") for k in patch.tensors)
    for component in patch.components:
        params = dict(getattr(pipe, component).named_parameters())
        for name, new in patch.component_tensors(component).items():
            delta = new - params[name].detach()
            # W + B A - W in float32: rank 2 up to the rounding of the sum
            assert 0 < torch.linalg.matrix_rank(delta, rtol=1e-3) <= 2, name
    with patch.applied(pipe):
        erased = states(pipe)
    assert not torch.allclose(erased, states(pipe))  # it erases something
    info = export_lora(patch, find_text_encoders(pipe), ["text_encoder", "text_encoder_2"],
                       tmp_path / "r2.safetensors", rank=2).info
    assert all(i["weight_error"] < 1e-4 and not i["dropped"] for i in info.values())
    with pytest.raises(HirmError, match="method uce has no option 'lora_rank'"):
        hirm.erase(pipe, "cat", method="uce", lora_rank=2, progress=False)


def test_checkpoint_export_writes_the_patch_into_the_single_file_checkpoint(tmp_path):
    """An SD 1.x single-file checkpoint (its text encoder under `cond_stage_model.transformer.`) gets the patched
    tensors in place: diffusers' own single-file loader reads back the patched encoder, every other tensor is as
    it was; a checkpoint of other weights is refused and nothing is written."""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from safetensors.torch import load_file, save_file

    from hirm.export import export_checkpoint

    folder = tmp_path / "sd"
    dummies.sd_pipeline().save_pretrained(folder)
    pipe = dummies.sd_pipeline()
    prefix = "cond_stage_model.transformer.text_model."
    original = {prefix + k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    original["model.diffusion_model.out.2.weight"] = torch.randn(4, 8, 3, 3)  # stands for the rest of the file
    ckpt = tmp_path / "sd-v1.safetensors"
    save_file(original, str(ckpt), metadata={"format": "pt", "trainer": "someone"})
    patch = hirm.erase(pipe, "cat", method="hirm-r", steps=3, lr=1e-2, progress=False)
    out = tmp_path / "sd-v1-without-cat.safetensors"
    result = export_checkpoint(patch, find_text_encoders(pipe), folder, ckpt, out)
    assert result.info["text_encoder"]["tensors"] == len(patch.tensors)
    written = load_file(str(out))
    assert set(written) == set(original)
    changed = {k for k in original if not torch.equal(original[k], written[k])}
    assert changed == {prefix + n for n in patch.component_tensors("text_encoder")}
    meta = read_export_metadata(out)
    assert meta["export"]["format"] == "checkpoint" and meta["patch"]["fingerprints"] == patch.fingerprints
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["trainer"] == "someone"  # the checkpoint's own metadata is kept
    loaded = create_diffusers_clip_model_from_ldm(CLIPTextModel, written, subfolder="text_encoder",
                                                  config=str(folder), local_files_only=True).eval()
    with patch.applied(pipe):
        want = states(pipe)
    fresh = dummies.sd_pipeline()
    fresh.register_modules(text_encoder=loaded)
    assert torch.allclose(states(fresh), want, atol=1e-5)
    other = {k: v + 0.01 if "layers.1." in k else v for k, v in original.items()}
    save_file(other, str(tmp_path / "other.safetensors"))
    with pytest.raises(HirmError, match="not the one the patch was made from"):
        export_checkpoint(patch, find_text_encoders(pipe), folder, tmp_path / "other.safetensors",
                          tmp_path / "never.safetensors")
    assert not (tmp_path / "never.safetensors").exists()


def _open_clip_layout(model: CLIPTextModel, prefix: str) -> dict[str, torch.Tensor]:
    """`model`'s weights as a single-file checkpoint holds an OpenCLIP encoder (SD 2.x's ViT-H, SDXL's bigG; the
    original key layout: `transformer.resblocks.N`, q/k/v stacked as one `in_proj_weight`, `text_projection`
    transposed)."""
    sd = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
    out = {prefix + "positional_embedding": sd["embeddings.position_embedding.weight"],
           prefix + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
           prefix + "ln_final.weight": sd["final_layer_norm.weight"],
           prefix + "ln_final.bias": sd["final_layer_norm.bias"]}
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd["text_projection.weight"].T.contiguous()
    for i in range(model.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([sd[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[dst + f"{a}.{kind}"] = sd[src + f"{b}.{kind}"]
    return {k: v.clone() for k, v in out.items()}


@pytest.mark.parametrize("layout", ["sd2", "sdxl"])
def test_checkpoint_export_into_an_open_clip_checkpoint(tmp_path, layout):
    """SD 2.x's layout (OpenCLIP ViT-H under `cond_stage_model.model.`) and SDXL's (CLIP-L under
    `conditioner.embedders.0.transformer.`, OpenCLIP bigG under `conditioner.embedders.1.model.`), q/k/v in one
    tensor: the patch lands in the right keys (and the right thirds of `in_proj_weight`), and diffusers'
    single-file loader reads every patched encoder back."""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from safetensors.torch import load_file, save_file

    from hirm.encoders import TextEncoder
    from hirm.export import export_checkpoint

    if layout == "sd2":
        models = {"text_encoder": dummies.clip_text_model(0)}
        original = _open_clip_layout(models["text_encoder"], "cond_stage_model.model.")
    else:  # the second encoder wider than the first, as bigG (1280) is than CLIP-L (768): diffusers tells them
        # apart by width
        models = {"text_encoder": dummies.clip_text_model(0),
                  "text_encoder_2": dummies.clip_text_model(1, hidden=48, projection=True)}
        original = {"conditioner.embedders.0.transformer.text_model." + k: v.clone()
                    for k, v in models["text_encoder"].state_dict().items()}
        original |= _open_clip_layout(models["text_encoder_2"], "conditioner.embedders.1.model.")
    folder = tmp_path / layout
    for name, model in models.items():
        model.save_pretrained(folder / name)
    encoders = [TextEncoder(n, m, dummies.clip_tokenizer()) for n, m in models.items()]
    original["model.diffusion_model.out.2.weight"] = torch.randn(4, 8, 3, 3)
    ckpt = tmp_path / f"{layout}.safetensors"
    save_file(original, str(ckpt))
    patch = hirm.erase(encoders, "cat", method="hirm-r", steps=3, lr=1e-2, progress=False)
    assert set(patch.components) == set(models)
    out = tmp_path / f"{layout}-without-cat.safetensors"
    export_checkpoint(patch, encoders, folder, ckpt, out)
    written = load_file(str(out))
    changed = {k for k in original if not torch.equal(original[k], written[k])}
    assert changed and all(".layers.0." in k or ".resblocks.0." in k for k in changed)
    assert any(k.endswith("resblocks.0.attn.in_proj_weight") for k in changed)
    with patch.applied(encoders):
        want = {e.name: final_states(e, PROMPTS)[0] for e in encoders}
    for enc in encoders:
        loaded = create_diffusers_clip_model_from_ldm(type(enc.model), written, subfolder=enc.name,
                                                      config=str(folder), local_files_only=True).eval()
        got = final_states(TextEncoder(enc.name, loaded, dummies.clip_tokenizer()), PROMPTS)[0]
        assert torch.allclose(got, want[enc.name], atol=1e-5), enc.name
