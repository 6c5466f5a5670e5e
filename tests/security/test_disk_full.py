"""A disk that fills mid-write leaves no half-written file, and a run folder resumes to the same result; two runs
into one run folder are kept apart by a lock."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from hirm.errors import HirmError
from hirm.eval.protocols.base import Protocol
from hirm.eval.protocols.prompts import Item
from hirm.eval.protocols.runner import run_protocol
from hirm.io import atomic_file, run_folder_lock, write_text

PROMPTS = ["a red star", "a photo of a cat", "a blue circle", "the red dog"]


class Tiny(Protocol):
    """A protocol with no scoring model: each image's mean pixel value."""

    name: ClassVar[str] = "tiny"
    summary: ClassVar[str] = "test protocol"
    steps: ClassVar[int] = 2
    guidance: ClassVar[float] = 3.0
    scheduler: ClassVar[str] = "keep"
    seed: ClassVar[int] = 0

    def items(self, prompts, limit):
        return [Item(f"{i:02d}", p, 100 + i) for i, p in enumerate(PROMPTS)]

    def score(self, items, images):
        return [{"mean": float(np.asarray(im, dtype=np.float64).mean())} for im in images]

    def summarize(self, items, records):
        return {"n_images": len(records), "mean": sum(r["scores"]["mean"] for r in records) / len(records)}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.parent.name in ("base", "erased")}


def _check_whole(folder: Path) -> None:
    """No temporary file, and every image and record that exists is complete."""
    assert not [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    for p in folder.rglob("*.png"):
        with Image.open(p) as im:
            im.load()
    for p in folder.rglob("*.json"):
        json.loads(p.read_text())


def test_a_write_that_fills_the_disk_leaves_the_old_file(tmp_path):
    target = write_text("old contents", tmp_path / "notes.md")
    with pytest.raises(HirmError, match="no space left on the device"), atomic_file(target) as tmp:
        with open(tmp, "w") as f:
            f.write("new cont")
            f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old contents" and [p.name for p in tmp_path.iterdir()] == ["notes.md"]


@pytest.fixture(scope="module")
def reference(sd_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    metrics = run_protocol(Tiny(), str(sd_folder), out, steps=2, batch_size=1, progress=False)
    return out, metrics


@pytest.mark.parametrize("where", ["image", "record"])
def test_disk_full_mid_run_then_resume_gives_the_same_result(sd_folder, reference, tmp_path, monkeypatch, where):
    ref_dir, ref_metrics = reference
    out = tmp_path / "run"
    calls = []
    if where == "image":  # the PNG encoder stops half-way through its third file
        real_save = Image.Image.save

        def save(self, fp, *args, **kwargs):
            calls.append(fp)
            if len(calls) == 3:
                Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n half an image")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_save(self, fp, *args, **kwargs)

        monkeypatch.setattr(Image.Image, "save", save)
    else:  # the third record's bytes are written, then flushing them to disk fails (delayed allocation)
        import hirm.io

        real_fsync = hirm.io._fsync

        def fsync(path):
            if path.name.endswith(".json.tmp") or ".json." in path.name:
                calls.append(path)
                if len(calls) == 3:
                    raise OSError(errno.ENOSPC, "No space left on device")
            return real_fsync(path)

        monkeypatch.setattr(hirm.io, "_fsync", fsync)
    with pytest.raises(HirmError, match="no space left on the device"):
        run_protocol(Tiny(), str(sd_folder), out, steps=2, batch_size=1, progress=False)
    monkeypatch.undo()
    _check_whole(out)
    assert not (out / "metrics.json").exists()
    assert 0 < len(list((out / "records").rglob("*.json"))) < len(PROMPTS)
    metrics = run_protocol(Tiny(), str(sd_folder), out, steps=2, batch_size=1, progress=False)
    assert metrics == ref_metrics
    assert _files(out) == _files(ref_dir)


def test_a_second_run_into_a_locked_run_folder_is_refused(sd_folder, tmp_path):
    """Before: two runs into one folder both passed the check-then-write of run.json and interleaved files."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from hirm.io import run_folder_lock\n"
        f"with run_folder_lock({str(out)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(HirmError, match="being written by another hirm process"):
            run_protocol(Tiny(), str(sd_folder), out, steps=2, batch_size=1, progress=False)
        assert list(out.iterdir()) == []  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    with run_folder_lock(out):  # released when its holder died
        pass
