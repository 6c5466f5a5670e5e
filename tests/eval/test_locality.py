import dummies
import hirm
from hirm.eval.locality import locality_probe


def test_probe_reports_in_out_change_per_region():
    enc = dummies.text_encoder()
    patch = hirm.erase([enc], "star", steps=10, lr=1e-3, progress=False)
    r = locality_probe(enc, patch, ["a red star", "a blue star"], ["a red circle", "a cat"])
    for region in ("bos", "content", "eos", "padding", "all"):
        assert r[region]["in"] > 0 and r[region]["out"] > 0
    # BOS is the same token at the same position in every prompt: it moves identically
    assert abs(r["bos"]["in"] - r["bos"]["out"]) < 1e-6
    assert len(r["per_position_in"]) == len(r["per_position_out"])


def test_probe_reads_the_text_half_of_a_two_half_patch():
    """A --robust patch also edits the UNet: the probe, which holds only the encoder, applies the encoder's part."""
    pipe = dummies.sd_pipeline()
    patch = hirm.erase(pipe, "star", steps=5, robust=True, progress=False)
    assert set(patch.components) == {"text_encoder", "unet"}
    enc = hirm.encoders.find_text_encoders(pipe)[0]
    r = locality_probe(enc, patch, ["a red star"], ["a cat"])
    assert r["all"]["in"] > 0
