"""Training checkpoints: replaced whole or not at all, and read back exactly."""

import torch
from torch import nn

from hirm.minicanvas.train import RunState, load_checkpoint, save_checkpoint


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    opt.zero_grad()


def test_checkpoint_replaced_whole_and_restored(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    _step(model, opt)
    save_checkpoint(tmp_path, {"net": model}, opt, RunState(step=1, seconds=1.0, images_seen=2))
    _step(model, opt)
    save_checkpoint(tmp_path, {"net": model}, opt, RunState(step=2, seconds=2.0, images_seen=4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no temp or old folder left

    fresh = nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    state = load_checkpoint(tmp_path, {"net": fresh}, fresh_opt)
    assert (state.step, state.images_seen) == (2, 4)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    # the optimiser's moments came back too: one more identical step keeps them identical
    _step(model, opt)
    _step(fresh, fresh_opt)
    assert torch.equal(model.weight, fresh.weight)
