"""Patch files: round trip, fingerprints, refusal of foreign or damaged patches."""

import pytest
import torch

import dummies
import hirm
from hirm.patch import Patch, fingerprint


@pytest.fixture(scope="module")
def made():
    enc = dummies.text_encoder(seed=0)
    return enc, hirm.erase([enc], "a red star", steps=5, lr=1e-3, progress=False)


def test_save_load_round_trip(made, tmp_path):
    _enc, patch = made
    path = patch.save(tmp_path / "p.safetensors")
    loaded = Patch.load(path)
    assert loaded.id == patch.id
    assert loaded.concepts == ["a red star"] and loaded.method == "hirm"
    assert loaded.config["steps"] == 5 and loaded.config["layers"] == "first-attn"
    assert loaded.fingerprints == patch.fingerprints
    assert all(torch.equal(loaded.tensors[k], v) for k, v in patch.tensors.items())
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind
    # patches compare as objects (a dataclass's field-wise == would ask tensors for a truth value and raise)
    assert loaded != patch and loaded == loaded and patch in [patch]


def test_apply_remove_restores_exactly(made):
    enc, patch = made
    original = {k: v.clone() for k, v in enc.model.state_dict().items()}
    handle = patch.apply([enc])
    assert any(not torch.equal(v, original[k]) for k, v in enc.model.state_dict().items())
    handle.remove()
    assert all(torch.equal(v, original[k]) for k, v in enc.model.state_dict().items())
    with patch.applied([enc]):
        pass
    assert all(torch.equal(v, original[k]) for k, v in enc.model.state_dict().items())


def test_patch_is_small_relative_to_encoder(made):
    enc, patch = made
    full = sum(t.numel() * t.element_size() for t in enc.model.state_dict().values())
    assert patch.nbytes < full / 4


def test_fingerprint_ignores_load_dtype_but_not_weights():
    a = dummies.clip_text_model(seed=0)
    assert fingerprint(a) == fingerprint(dummies.clip_text_model(seed=0).half())
    assert fingerprint(a) != fingerprint(dummies.clip_text_model(seed=1))


def test_fingerprint_is_hashed_once_and_again_after_any_weight_change(monkeypatch):
    import hirm.patch

    a = dummies.clip_text_model(seed=0)
    first = fingerprint(a)
    hashed = []
    real = hirm.patch.hashlib.sha256
    monkeypatch.setattr(hirm.patch.hashlib, "sha256", lambda: hashed.append(1) or real())
    assert fingerprint(a) == first and not hashed  # kept
    weight = a.get_input_embeddings().weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1e-2)  # in place, as an optimiser step or a patch writes
    assert fingerprint(a) != first and len(hashed) == 1
    with torch.no_grad():
        weight.copy_(saved)
    assert fingerprint(a) == first
    weight.data = saved + 1e-2  # replaced
    assert fingerprint(a) != first
    weight.data.copy_(saved)  # the one write PyTorch does not count: unseen until forgotten
    hirm.patch.forget_fingerprints(a)
    assert fingerprint(a) == first


def test_wrong_encoder_refused(made):
    _, patch = made
    other = dummies.text_encoder(seed=1)
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    with pytest.raises(hirm.HirmError, match="fingerprint"):
        patch.apply([other])
    assert all(torch.equal(v, before[k]) for k, v in other.model.state_dict().items())


def test_patch_for_missing_component_refused(made):
    _, patch = made
    enc = dummies.text_encoder()
    enc.name = "text_encoder_2"
    with pytest.raises(hirm.HirmError, match="no such component"):
        patch.apply([enc])


def test_truncated_and_foreign_files_refused(made, tmp_path):
    _, patch = made
    path = patch.save(tmp_path / "p.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(hirm.HirmError, match="corrupt or truncated"):
        Patch.load(cut)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(hirm.HirmError):
        Patch.load(garbage)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(hirm.HirmError, match="not a hirm patch"):
        Patch.load(plain)
    with pytest.raises(hirm.HirmError, match="does not exist"):
        Patch.load(tmp_path / "missing.safetensors")


def test_fp16_pipeline_accepts_patch_made_in_fp32():
    pipe = dummies.sd_pipeline()
    patch = hirm.erase(pipe, "star", steps=2, progress=False)
    half = dummies.sd_pipeline()
    half.text_encoder.half()
    patch.apply(half)
    key = next(iter(patch.tensors))
    name = key.split("::", 1)[1]
    assert torch.equal(dict(half.text_encoder.named_parameters())[name], patch.tensors[key].half())


def test_average_is_the_elementwise_mean_of_patches_of_the_same_tensors():
    enc = dummies.text_encoder(seed=0)
    a = hirm.erase([enc], "a red star", steps=2, lr=1e-3, progress=False)
    b = hirm.erase([enc], "a blue circle", steps=2, lr=1e-3, progress=False)
    mean = Patch.average([a, b])
    assert mean.concepts == ["a red star", "a blue circle"] and mean.fingerprints == a.fingerprints
    for k, t in mean.tensors.items():
        assert torch.allclose(t, (a.tensors[k] + b.tensors[k]) / 2)
    with mean.applied([enc]):
        pass  # made from the same base weights: accepted
    with pytest.raises(hirm.HirmError, match="cannot average"):
        Patch.average([a, hirm.erase([enc], "x", steps=1, layers="1", progress=False)])


def test_all_applied_applies_in_order_and_always_removes_every_patch(made):
    """A patch made on an already patched model applies after the one it was made on, and a failure part-way
    leaves the model as it was."""
    from hirm.errors import HirmError
    from hirm.patch import all_applied

    enc, first = made
    original = {k: v.clone() for k, v in enc.model.state_dict().items()}
    with first.applied([enc]):
        second = hirm.erase([enc], "a blue moon", steps=3, lr=1e-3, progress=False)
    with all_applied([first, second], [enc]):
        patched = {k: v.clone() for k, v in enc.model.state_dict().items()}
    assert any(not torch.equal(v, original[k]) for k, v in patched.items())
    assert all(torch.equal(v, original[k]) for k, v in enc.model.state_dict().items())
    with pytest.raises(HirmError, match="fingerprint"), all_applied([second, first], [enc]):
        pass
    assert all(torch.equal(v, original[k]) for k, v in enc.model.state_dict().items())
