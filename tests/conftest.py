import os

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
