"""The one optimisation loop every trained method shares."""

import torch

import dummies
from hirm.erase.loop import OptimConfig, optimise


def test_optimise_is_plain_adamw_and_leaves_the_model_as_it_was():
    """The loop's fused AdamW makes the weights the textbook per-tensor AdamW makes (same math, float rounding
    apart), and hands the model back untouched."""
    enc = dummies.text_encoder()
    names = ["encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.0.mlp.fc1.bias"]
    ids = enc.tokenize(["a red star"])
    target = torch.randn(1, ids.shape[1], enc.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    opt = OptimConfig(steps=5, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=1e-2)
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}

    def loss(step: int) -> torch.Tensor:
        return (enc.model(input_ids=ids).last_hidden_state - target).pow(2).mean()

    got = optimise(enc.model, names, loss, opt, "test", progress=False).tensors
    assert all(torch.equal(v, enc.model.state_dict()[k]) for k, v in before.items())

    params = dict(enc.model.named_parameters())
    for p in enc.model.parameters():
        p.requires_grad_(False)
    for n in names:
        params[n].requires_grad_(True)
    textbook = torch.optim.AdamW([params[n] for n in names], lr=opt.lr, betas=opt.betas, eps=opt.eps,
                                 weight_decay=opt.weight_decay, foreach=False)
    for step in range(opt.steps):
        textbook.zero_grad()
        loss(step).backward()
        textbook.step()
    for n in names:
        assert not torch.equal(got[n], before[n])
        moved = (got[n] - before[n]).abs().max()
        assert (got[n] - params[n].detach()).abs().max() <= 1e-4 * moved, n  # rounding, not a different update
