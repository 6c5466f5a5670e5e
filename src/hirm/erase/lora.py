"""Training an erasure as a LoRA (`hirm erase --lora-rank R`): peft's LoRA adapters on the modules the method
would train, so that the patch is a rank-R change of each weight and its LoRA export is exact."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from hirm.errors import HirmError


@contextmanager
def lora_adapters(model: torch.nn.Module, weight_names: list[str], rank: int, seed: int
                  ) -> Iterator[tuple[list[str], Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]]]:
    """Inject peft LoRA adapters (rank `rank`, alpha = rank, so the scale is 1) into the linear layers whose weights
    are `weight_names`; yield the adapters' parameter names (what to train) and a function that turns trained
    adapter tensors into merged weights `W + B A` under the original weight names. `model` is as it was after
    the block: the adapters are unloaded, its weights never merged."""
    try:
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel
    except ImportError:
        raise HirmError("--lora-rank trains peft LoRA adapters: pip install 'hirm-erase[lora]' (or peft)") from None
    if rank < 1:
        raise HirmError(f"--lora-rank {rank}: give a positive rank, e.g. 16 (0: train the full weights)")
    modules = [n.removesuffix(".weight") for n in weight_names if n.endswith(".weight")]
    if not modules:
        raise HirmError("--lora-rank: the method trains no weight matrix to put a LoRA on")
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=modules, lora_dropout=0.0, bias="none")
    torch.manual_seed(seed)  # peft initialises A at random: the same seed, the same patch
    lora = LoraModel(model, config, "hirm")
    try:
        params = dict(model.named_parameters())
        trained = [f"{m}.lora_{ab}.hirm.weight" for m in modules for ab in ("A", "B")]

        def merged(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {f"{m}.weight": params[f"{m}.base_layer.weight"].detach()
                    + tensors[f"{m}.lora_B.hirm.weight"] @ tensors[f"{m}.lora_A.hirm.weight"] for m in modules}

        yield trained, merged
    finally:
        lora.unload()


__all__ = ["lora_adapters"]
