"""Every documented failure of the `hirm` command is one line and exit 2 (130 on Ctrl-C, 143 on SIGTERM), found
before the compute where it can be; outputs honour the umask."""

from __future__ import annotations

import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import dummies
from hirm.cli import app

from .hostile import patch_file, picture

runner = CliRunner()
HIRM = Path(sys.executable).parent / "hirm"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture
def no_compute(replace_everywhere):
    """Training, model loading and sampling fail the test if reached: the checks must come first."""
    import hirm.api
    import hirm.encoders
    import hirm.generate

    def reached(*args, **kwargs):
        raise AssertionError("the command started computing before checking its output path")

    replace_everywhere(sys.modules["hirm.erase"].erase, reached)
    replace_everywhere(hirm.api.erase, reached)
    replace_everywhere(hirm.encoders.load_pipeline, reached)
    replace_everywhere(hirm.generate.sample, reached)


@pytest.fixture(scope="module")
def patch_path(sd_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("patch") / "star.safetensors"
    r = run("erase", "--model", sd_folder, "--concept", "a red star", "--out", out, "--steps", "2")
    assert r.exit_code == 0, r.output
    return out


def _bad_outs(tmp_path: Path, name: str) -> list[tuple[Path, str]]:
    folder = tmp_path / f"existing-{name}"
    folder.mkdir()
    (folder / "x").write_text("x")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return [(folder, "existing folder"), (a_file / "sub" / name, "is a file, not a folder"),
            (Path("/proc/hirm-no-such-place") / name, "cannot write in /proc")]


def test_erase_checks_out_before_training(sd_folder, tmp_path, no_compute):
    """Before: a bad --out was reported only after all the training, as a traceback."""
    for out, message in _bad_outs(tmp_path, "p.safetensors"):
        assert message in one_error_line(run("erase", "--model", sd_folder, "--concept", "star", "--out", out))


def test_apply_checks_out_before_loading(sd_folder, patch_path, tmp_path, no_compute):
    a_file = tmp_path / "file-out"
    a_file.write_text("x")
    cases = [(tmp_path / "existing-pipe", "already exists and is not empty"), (a_file, "is an existing file"),
             (a_file / "sub", "is a file, not a folder"), (Path("/proc/hirm-no-such-place/pipe"), "cannot write in")]
    (tmp_path / "existing-pipe").mkdir()
    (tmp_path / "existing-pipe" / "model_index.json").write_text("{}")
    for out, message in cases:
        line = one_error_line(run("apply", "--model", sd_folder, "--patch", patch_path, "--out", out))
        assert message in line, line


def test_generate_checks_the_image_name_before_sampling(sd_folder, tmp_path, no_compute):
    """Before: `hirm generate --out g.txt` sampled, then ended in KeyError."""
    line = one_error_line(run("generate", "--model", sd_folder, "--prompt", "x", "--out", tmp_path / "g.txt"))
    assert ".txt is not an image format" in line
    for out, message in _bad_outs(tmp_path, "g.png"):
        assert message in one_error_line(run("generate", "--model", sd_folder, "--prompt", "x", "--out", out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "existing-g.png"]


def test_pickle_weights_in_a_model_folder_are_one_line(tmp_path):
    """Before: a long traceback ending in UnpicklingError (refused, but not in one line)."""
    folder = tmp_path / "te"
    dummies.clip_text_model().save_pretrained(folder)
    dummies.clip_tokenizer().save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Payload()}))
    line = one_error_line(run("erase", "--model", folder, "--concept", "star", "--out", tmp_path / "p.safetensors",
                              "--steps", "1"))
    assert "cannot load the model in" in line
    assert not marker.exists()  # the payload never ran
    assert not (tmp_path / "p.safetensors").exists()


def test_sigterm_during_a_command_exits_143_and_writes_nothing(sd_folder, tmp_path, replace_everywhere):
    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the command")

    replace_everywhere(sys.modules["hirm.erase"].erase, terminated)
    out = tmp_path / "p.safetensors"
    line = one_error_line(run("erase", "--model", sd_folder, "--concept", "star", "--out", out), code=143)
    assert line == "error: terminated; nothing was written"
    assert signal.getsignal(signal.SIGTERM) is not None and not out.exists()


def test_ctrl_c_in_a_resumable_command_does_not_say_nothing_was_written(sd_folder, tmp_path, replace_everywhere):
    """Before: "interrupted; nothing was written" was printed for evals that did write (resumable) files."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    import hirm.eval.protocols.runner

    replace_everywhere(hirm.eval.protocols.runner.run_protocol, interrupted)
    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt\na cat\n")
    line = one_error_line(run("eval", "--protocol", "nudity", "--model", sd_folder, "--prompts", prompts,
                              "--out", tmp_path / "run"), code=130)
    assert "nothing was written" not in line and "re-run the same command to resume" in line


def test_debug_shows_the_traceback(tmp_path):
    bad = patch_file(tmp_path / "p.safetensors", concepts=5)
    assert "Traceback" not in run("inspect", bad).output
    r = run("--debug", "inspect", bad)
    assert r.exit_code == 2 and "Traceback" in r.output and "error: " in r.output


def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([str(HIRM), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until_importing_torch(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until torch's library is mapped into the process (Linux: /proc/PID/maps): `import hirm` installs its
    start-up handlers before it imports torch, and torch takes seconds more. A fixed sleep can be outrun by a
    loaded machine (and Python's own SIGINT handler is there from the start, so the signal mask tells nothing)."""
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if "libtorch" in maps.read_text():
            return
        time.sleep(0.01)
    raise AssertionError(f"hirm did not start importing torch within {timeout:.0f} s")


@pytest.mark.skipif(not HIRM.exists(), reason="the hirm console script is not installed")
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mapped libraries (Linux)")
@pytest.mark.parametrize(("sig", "code", "message"), [(signal.SIGINT, 130, "interrupted"),
                                                      (signal.SIGTERM, 143, "terminated")])
def test_a_signal_during_start_up_is_one_line(tmp_path, sig, code, message):
    """Before: Ctrl-C while hirm imported torch printed a traceback."""
    proc = _start("inspect", str(tmp_path / "missing.safetensors"))
    _wait_until_importing_torch(proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and err.strip() == f"error: {message}; nothing was written"


def test_no_space_left_is_one_line_and_leaves_no_file(sd_folder, tmp_path, monkeypatch):
    from PIL import Image

    def disk_full(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    out = tmp_path / "grid.png"
    line = one_error_line(run("generate", "--model", sd_folder, "--prompt", "x", "-n", "1", "--steps", "1",
                              "--out", out))
    assert "no space left on the device to write" in line
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_honour_the_umask(sd_folder, patch_path, tmp_path, umask_022):
    """Before: patches, images and reports were 0600 and `apply` folders 0700 (tempfile's modes)."""
    from hirm.eval.protocols.report import write_report
    from hirm.images import save_atomic, write_text_atomic
    from hirm.patch import Patch

    assert _mode(Patch.load(patch_path).save(tmp_path / "p.safetensors")) == 0o644
    assert _mode(save_atomic(picture(), tmp_path / "i.png")) == 0o644
    assert _mode(write_text_atomic("x", tmp_path / "t.md")) == 0o644
    out = tmp_path / "patched"
    assert run("apply", "--model", sd_folder, "--patch", patch_path, "--out", out).exit_code == 0
    assert _mode(out) == 0o755 and _mode(out / "model_index.json") == 0o644
    assert all(_mode(p) == (0o755 if p.is_dir() else 0o644) for p in out.rglob("*"))
    from .hostile import run_folder

    run_dir = run_folder(tmp_path / "runs")
    html, md = write_report(run_dir)
    assert _mode(html) == _mode(md) == 0o644
    assert all(_mode(p) == 0o644 for p in (run_dir / "report").iterdir())
    os.umask(0o077)
    assert _mode(save_atomic(picture(), tmp_path / "private.png")) == 0o600


def test_erase_one_line_for_a_tensor_file_that_is_not_a_patch(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    assert "not a hirm patch" in one_error_line(run("inspect", tmp_path / "plain.safetensors"))
