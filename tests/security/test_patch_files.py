"""Hostile patch files: values no erasure makes, metadata of the wrong types, newer formats; and `apply`
changing a model all or nothing."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import dummies
from hirm.cli import app
from hirm.errors import HirmError
from hirm.patch import Patch, fingerprint

from .hostile import one_error_line, patch_file, snapshot

runner = CliRunner()


@pytest.fixture
def encoder():
    return dummies.text_encoder(seed=0)


def real_patch_file(path: Path, encoder, tensors: dict[str, torch.Tensor]) -> Path:
    """A patch for `encoder` (its true fingerprint) holding `tensors` (parameter name -> value)."""
    return patch_file(path, {f"text_encoder::{k}": v for k, v in tensors.items()},
                      fingerprints={"text_encoder": fingerprint(encoder.model)})


W = "encoder.layers.0.self_attn.q_proj.weight"  # 32 x 32 in the tiny encoder
B = "encoder.layers.1.self_attn.q_proj.bias"  # after W in the file's (sorted) order


@pytest.mark.parametrize(("value", "message"), [
    (torch.full((32, 32), float("nan")), "NaN or infinite"),
    (torch.full((32, 32), float("inf")), "NaN or infinite"),
    (torch.ones(32, 32, dtype=torch.bool), "is bool"),
    (torch.ones(32, 32, dtype=torch.int64), "is int64"),
    (torch.ones(32, 32, dtype=torch.uint8), "is uint8"),
])
def test_values_no_erasure_makes_are_refused(tmp_path, encoder, value, message):
    """Before: NaN, inf, bool and integer tensors applied with exit 0 (a NaN patch draws black images, which an
    evaluation scores as perfect erasure)."""
    path = real_patch_file(tmp_path / "p.safetensors", encoder, {W: value})
    with pytest.raises(HirmError, match=message):
        Patch.load(path)
    assert message in one_error_line(runner.invoke(app, ["inspect", str(path)]))
    # the API refuses the same values in a patch built in memory
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    patch = Patch({f"text_encoder::{W}": value}, ["x"], "hirm-r", {}, {"text_encoder": fingerprint(encoder.model)})
    with pytest.raises(HirmError, match=message):
        patch.apply([encoder])
    assert all(torch.equal(v, before[k]) for k, v in encoder.model.state_dict().items())


def test_a_patch_with_no_tensors_is_refused(tmp_path):
    path = patch_file(tmp_path / "empty.safetensors", tensors={})
    with pytest.raises(HirmError, match="holds no tensors"):
        Patch.load(path)


def test_a_value_that_overflows_the_models_dtype_is_refused(tmp_path, encoder):
    encoder.model.half()
    path = real_patch_file(tmp_path / "p.safetensors", encoder, {W: torch.full((32, 32), 1e6)})
    with pytest.raises(HirmError, match="overflows"):
        Patch.load(path).apply([encoder])


@pytest.mark.parametrize(("fields", "message"), [
    ({"concepts": 5}, "concepts is not a non-empty list of strings"),
    ({"concepts": []}, "concepts is not"),
    ({"concepts": [1, 2]}, "concepts is not"),
    ({"method": ["a"]}, "method is not a non-empty string"),
    ({"config": "steps=1"}, "config is not an object"),
    ({"fingerprints": ["abc"]}, "fingerprints is not an object of strings"),
    ({"fingerprints": {"text_encoder": 5}}, "fingerprints is not"),
    ({"fingerprints": {}}, "no base fingerprint for text_encoder"),
    ({"info": None}, "info is not an object"),
    ({"format_version": 1}, "not a version"),
    ({"format_version": "2"}, "written by a newer hirm"),
    ({"format_version": "10.1"}, "written by a newer hirm"),
    ({"format_version": "0"}, "re-make it with this hirm"),
])
def test_metadata_of_the_wrong_types_is_one_line(tmp_path, fields, message):
    """Before: `hirm inspect` ended in AttributeError / TypeError tracebacks for metadata of the wrong types."""
    path = patch_file(tmp_path / "p.safetensors", **fields)
    with pytest.raises(HirmError, match=message):
        Patch.load(path)
    assert message in one_error_line(runner.invoke(app, ["inspect", str(path)]))


def test_hirm_errors_are_value_errors_and_readers_do_not_rewrap_them(tmp_path):
    """HirmError is a ValueError (Python's convention for bad input); the readers that turn a foreign file's
    ValueError into a HirmError let hirm's own one-line message through unchanged."""
    assert issubclass(HirmError, ValueError)
    path = patch_file(tmp_path / "p.safetensors", format_version="2")
    with pytest.raises(HirmError) as caught:
        Patch.load(path)
    assert str(caught.value).startswith(f"{path} is hirm patch format")


@pytest.mark.parametrize("raw", ["[1, 2]", "null", "\"text\"", "{", "[" * 100000])
def test_metadata_that_is_not_an_object_is_one_line(tmp_path, raw):
    path = patch_file(tmp_path / "p.safetensors", meta=raw)
    assert "damaged hirm metadata" in one_error_line(runner.invoke(app, ["inspect", str(path)]))


def test_a_later_minor_version_is_read(tmp_path):
    assert Patch.load(patch_file(tmp_path / "p.safetensors", format_version="1.4")).concepts == ["star"]


def test_inspect_escapes_control_characters(tmp_path):
    path = patch_file(tmp_path / "p.safetensors", concepts=["\x1b[2Jred\nstar"], method="m\x07")
    r = runner.invoke(app, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output and "\\x1b[2Jred star" in r.output


def test_patch_option_given_a_folder_says_so(tmp_path):
    """Before: `--patch DIR` said the patch 'does not exist'."""
    with pytest.raises(HirmError, match="is a folder, not a patch file"):
        Patch.load(tmp_path)


def test_apply_is_all_or_nothing_on_a_shape_mismatch(tmp_path, encoder):
    """Before: a shape mismatch part-way left the model half-patched, and remove() then said the patch was not
    applied."""
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    path = real_patch_file(tmp_path / "p.safetensors", encoder, {W: torch.full((32, 32), 0.5), B: torch.zeros(7)})
    patch = Patch.load(path)
    with pytest.raises(HirmError, match="has shape"):
        patch.apply([encoder])
    assert all(torch.equal(v, before[k]) for k, v in encoder.model.state_dict().items())
    with pytest.raises(HirmError, match="not applied"):
        patch.remove([encoder])


def test_apply_restores_what_it_copied_when_a_copy_fails(tmp_path, encoder, monkeypatch):
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    patch = Patch.load(real_patch_file(tmp_path / "p.safetensors", encoder,
                                       {W: torch.full((32, 32), 0.5), B: torch.full((32,), 0.5)}))
    real_copy, calls = torch.Tensor.copy_, []

    def failing_copy(self, src, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return real_copy(self, src, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "copy_", failing_copy)
    with pytest.raises(RuntimeError, match="device lost"):
        patch.apply([encoder])
    monkeypatch.undo()
    assert all(torch.equal(v, before[k]) for k, v in encoder.model.state_dict().items())
    handle = patch.apply([encoder])  # and it applies (and removes) cleanly afterwards
    handle.remove()
    assert all(torch.equal(v, before[k]) for k, v in encoder.model.state_dict().items())


def test_unknown_parameter_is_refused(tmp_path, encoder):
    patch = Patch.load(real_patch_file(tmp_path / "p.safetensors", encoder, {"no.such.weight": torch.zeros(2)}))
    with pytest.raises(HirmError, match="does not exist in this model"):
        patch.apply([encoder])


# --- property: whatever the metadata holds ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)
metadata = st.fixed_dictionaries(
    {}, optional={"format_version": st.sampled_from(["1", "1.1", "2"]) | json_values,
                  "concepts": st.lists(st.text(max_size=10), max_size=3) | json_values,
                  "method": st.text(max_size=10) | json_values,
                  "config": st.dictionaries(st.text(max_size=8), json_values, max_size=4) | json_values,
                  "fingerprints": st.dictionaries(st.sampled_from(["text_encoder", "unet"]), st.text(max_size=8))
                  | json_values,
                  "info": st.dictionaries(st.sampled_from(["text_encoder", "x"]), st.dictionaries(
                      st.sampled_from(["loss_first", "loss_last", "cos_to_target_before", "cos_to_target_after"]),
                      json_values)) | json_values}) | json_values
tensor_sets = st.sampled_from([
    {"text_encoder::w": torch.ones(2)}, {}, {"w": torch.ones(2)}, {"::w": torch.ones(2)},
    {"text_encoder::w": torch.tensor([float("nan")])}, {"text_encoder::w": torch.ones(2, dtype=torch.int32)},
    {"text_encoder::w": torch.ones(2, dtype=torch.bfloat16), "unet::b": torch.zeros(1, dtype=torch.float16)},
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meta=metadata, tensors=tensor_sets)
def test_any_patch_metadata_loads_or_is_one_line_and_writes_nothing(meta, tensors):
    with tempfile.TemporaryDirectory() as tmp:
        path = patch_file(Path(tmp) / "p.safetensors", tensors=tensors, meta=meta)
        before = snapshot(Path(tmp))
        try:
            patch = Patch.load(path)
        except HirmError as e:
            assert str(e) and "\n" not in str(e)
        else:
            assert patch.tensors and all(torch.isfinite(t).all() for t in patch.tensors.values())
            json.dumps(patch.summary())  # what `inspect --json` prints
        r = runner.invoke(app, ["inspect", str(path)])
        assert r.exit_code in (0, 2) and "Traceback" not in r.output, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        if r.exit_code == 2:
            one_error_line(r)
        assert snapshot(Path(tmp)) == before
