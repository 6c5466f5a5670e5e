import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

# At most 2 threads: the suite shares small CPUs. No exact comparison may depend on this host-dependent count:
# in-process comparisons compute both sides in this process at the same count (same seed -> same patch bytes),
# and protocol runs compared across processes compute at their recorded --threads, whatever this count is.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory):
    """A tiny random SD pipeline saved as a diffusers folder."""
    import dummies

    path = tmp_path_factory.mktemp("tiny-sd")
    dummies.sd_pipeline().save_pretrained(path)
    return path


@pytest.fixture
def replace_everywhere(monkeypatch):
    """`replace(original, replacement)`: swap a hirm function for the test wherever a hirm module holds it
    (modules import names at their top, so patching only the defining module would miss the callers)."""
    import sys

    def replace(original, replacement) -> int:
        count = 0
        for name, module in list(sys.modules.items()):
            if name == "hirm" or name.startswith("hirm."):
                for attr, value in list(vars(module).items()):
                    if value is original:
                        monkeypatch.setattr(module, attr, replacement)
                        count += 1
        assert count, f"{original!r} is held by no hirm module"
        return count

    return replace


@pytest.fixture
def chromium() -> str:
    """The headless Chromium binary: a failure in CI, which must run the browser tests (`.ci/run` installs it),
    a skip elsewhere."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("headless Chromium not installed, and CI must run this test: apt-get install chromium")
        pytest.skip("headless Chromium not installed: apt-get install chromium")
    return binary
