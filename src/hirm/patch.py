"""Safety patches: the changed tensors of an erasure, as one small safetensors file with metadata.

A patch holds the new values of only the tensors an erasure changed, keyed `"{component}::{parameter}"`
(component = the pipeline's name for the model: `text_encoder`, `text_encoder_2`, `unet`, ...), plus
metadata: format version, concept(s), method and its full config, and per component a sha256 fingerprint
of the base weights it was made from. Applying copies the tensors in place (zero inference cost) after
checking the fingerprint; removing restores the originals kept at apply time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import weakref
from collections.abc import Iterable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from hirm.errors import HirmError

FORMAT = "hirm-patch"
FORMAT_VERSION = "1"
SEP = "::"


def fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a model's weights, independent of the dtype it was loaded in.

    Tensors are hashed as fp16 (name, shape, bytes) in name order, so a pipeline loaded in fp16 or fp32 from
    the same checkpoint has the same fingerprint, while any other weights do not.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if not torch.is_floating_point(t):
            continue
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()


def components_of(target: Any) -> dict[str, torch.nn.Module]:
    """Name -> module for a diffusers pipeline, a `TextEncoder` list, or a dict of modules."""
    from hirm.encoders import TextEncoder

    if isinstance(target, dict):
        return target
    if isinstance(target, TextEncoder):
        return {target.name: target.model}
    if isinstance(target, list) and all(isinstance(t, TextEncoder) for t in target):
        return {t.name: t.model for t in target}
    comps = getattr(target, "components", None)
    if isinstance(comps, dict):
        return {k: v for k, v in comps.items() if isinstance(v, torch.nn.Module)}
    raise HirmError(f"cannot apply a patch to a {type(target).__name__}: pass a diffusers pipeline or text encoder")


# originals saved at apply time, per patched module (weak: a deleted pipeline frees them)
_ORIGINALS: weakref.WeakKeyDictionary[torch.nn.Module, list[tuple[str, dict[str, torch.Tensor]]]] = (
    weakref.WeakKeyDictionary()
)


@dataclass
class Patch:
    """The result of an erasure: changed tensors + metadata. `apply` / `remove` / `save` / `load`."""

    tensors: dict[str, torch.Tensor]
    concepts: list[str]
    method: str
    config: dict[str, Any]
    fingerprints: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)  # deterministic measurements: loss, cosine, ...
    # wall time per component; reported, never saved (a file depends only on the seed and the inputs)
    seconds: dict[str, float] = field(default_factory=dict, compare=False)

    # ------------------------------------------------------------------ contents

    @property
    def components(self) -> list[str]:
        return sorted({k.split(SEP, 1)[0] for k in self.tensors})

    def component_tensors(self, component: str) -> dict[str, torch.Tensor]:
        prefix = component + SEP
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def id(self) -> str:
        """Content hash of the tensors (identifies the patch; same seed and inputs -> same id)."""
        h = hashlib.sha256()
        for k in sorted(self.tensors):
            h.update(k.encode())
            h.update(self.tensors[k].contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @classmethod
    def merge(cls, patches: list[Patch]) -> Patch:
        """One patch holding several edits of the same base model (e.g. HiRM's encoder + ESD's UNet)."""
        if not patches:
            raise HirmError("nothing to merge")
        tensors: dict[str, torch.Tensor] = {}
        fingerprints: dict[str, str] = {}
        seconds: dict[str, float] = {}
        for p in patches:
            overlap = sorted(set(tensors) & set(p.tensors))
            if overlap:
                raise HirmError(f"cannot merge: two patches both edit {overlap[0]}; apply them in turn instead")
            for c, f in p.fingerprints.items():
                if fingerprints.setdefault(c, f) != f:
                    raise HirmError(f"cannot merge: the patches were made from different {c} weights")
            tensors.update(p.tensors)
            for c, s in p.seconds.items():
                seconds[c] = seconds.get(c, 0.0) + s
        concepts = list(dict.fromkeys(c for p in patches for c in p.concepts))
        return cls(tensors=tensors, concepts=concepts, method="+".join(p.method for p in patches),
                   config={p.method: p.config for p in patches}, fingerprints=fingerprints,
                   info={p.method: p.info for p in patches}, seconds=seconds)

    @classmethod
    def average(cls, patches: list[Patch]) -> Patch:
        """The element-wise mean of patches that edit the same tensors of the same base model: the paper's
        weight-averaging merge of separately erased concepts (its baseline for multi-concept erasure)."""
        if not patches:
            raise HirmError("nothing to average")
        keys, prints = set(patches[0].tensors), patches[0].fingerprints
        if any(set(p.tensors) != keys or p.fingerprints != prints for p in patches):
            raise HirmError("cannot average: the patches edit different tensors or were made from different weights")
        tensors = {k: torch.stack([p.tensors[k] for p in patches]).mean(0) for k in patches[0].tensors}
        concepts = list(dict.fromkeys(c for p in patches for c in p.concepts))
        return cls(tensors=tensors, concepts=concepts, method="average(" + ",".join(p.method for p in patches) + ")",
                   config={"averaged": [p.config for p in patches]}, fingerprints=dict(prints),
                   info={"averaged": [p.info for p in patches]},
                   seconds={c: sum(p.seconds.get(c, 0.0) for p in patches) for c in prints})

    def only(self, components: list[str]) -> Patch:
        """The part of this patch that edits `components` (e.g. only its denoiser edit)."""
        keep = [c for c in self.components if c in components]
        return Patch(tensors={k: v for k, v in self.tensors.items() if k.split(SEP, 1)[0] in keep},
                     concepts=list(self.concepts), method=self.method, config=self.config,
                     fingerprints={c: f for c, f in self.fingerprints.items() if c in keep}, info=self.info)

    # ------------------------------------------------------------------ apply / remove

    def apply(self, target: Any, check: bool = True) -> AppliedPatch:
        """Write the patched tensors into `target`'s modules in place. Refuses weights it was not made from."""
        comps = components_of(target)
        missing = [c for c in self.components if c not in comps]
        if missing:
            raise HirmError(
                f"patch edits {missing[0]!r} but the model has no such component (it has: {', '.join(comps)})"
            )
        if check:
            for c in self.components:
                got = fingerprint(comps[c])
                if got != self.fingerprints.get(c):
                    raise HirmError(
                        f"patch was made for {c} with fingerprint {self.fingerprints.get(c, '?')[:12]}, but this "
                        f"model's {c} has {got[:12]}: apply it to the model it was made from"
                    )
        for c in self.components:
            module = comps[c]
            params = dict(module.named_parameters())
            new = self.component_tensors(c)
            unknown = [n for n in new if n not in params]
            if unknown:
                raise HirmError(f"patch tensor {c}{SEP}{unknown[0]} does not exist in this model's {c}")
            originals = {n: params[n].detach().clone() for n in new}
            with torch.no_grad():
                for n, t in new.items():
                    if params[n].shape != t.shape:
                        raise HirmError(f"patch tensor {c}{SEP}{n} has shape {tuple(t.shape)}, model has "
                                        f"{tuple(params[n].shape)}")
                    params[n].copy_(t.to(params[n].dtype))
            _ORIGINALS.setdefault(module, []).append((self.id, originals))
        return AppliedPatch(self, comps)

    def remove(self, target: Any) -> None:
        """Restore the tensors this patch replaced in `target` (the most recent application)."""
        comps = components_of(target)
        for c in self.components:
            module = comps[c]
            stack = _ORIGINALS.get(module, [])
            idx = next((i for i in range(len(stack) - 1, -1, -1) if stack[i][0] == self.id), None)
            if idx is None:
                raise HirmError(f"this patch is not applied to {c}")
            _, originals = stack.pop(idx)
            params = dict(module.named_parameters())
            with torch.no_grad():
                for n, t in originals.items():
                    params[n].copy_(t)

    @contextmanager
    def applied(self, target: Any):
        """`with patch.applied(pipe): ...` applies for the block and always restores."""
        self.apply(target)
        try:
            yield target
        finally:
            self.remove(target)

    # ------------------------------------------------------------------ files

    def metadata(self) -> dict[str, str]:
        """One metadata key holding sorted JSON: safetensors writes several keys in random order, and the
        same seed must give a byte-identical file."""
        body = {"format_version": FORMAT_VERSION, "concepts": self.concepts, "method": self.method,
                "config": self.config, "fingerprints": self.fingerprints, "info": self.info}
        return {FORMAT: json.dumps(body, sort_keys=True)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a temp file in the same folder, then rename (never a half-written patch)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}
            save_file(tensors, tmp, metadata=self.metadata())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Patch:
        path = Path(path)
        if not path.is_file():
            raise HirmError(f"patch file {path} does not exist")
        try:
            with safe_open(str(path), "pt") as f:
                raw = (f.metadata() or {}).get(FORMAT)
                if raw is None:
                    raise HirmError(f"{path} is a safetensors file but not a hirm patch (no '{FORMAT}' metadata)")
                try:
                    meta = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise HirmError(f"{path} has damaged hirm metadata ({e}): re-make the patch") from e
                if meta.get("format_version") != FORMAT_VERSION:
                    raise HirmError(f"{path} is hirm patch format v{meta.get('format_version')}; this hirm "
                                    f"reads v{FORMAT_VERSION}: upgrade hirm or re-make the patch")
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        except SafetensorError as e:
            raise HirmError(f"{path} is not a readable safetensors file ({e}): it is corrupt or truncated, "
                            "re-make or re-copy it") from e
        except (OSError, ValueError) as e:
            raise HirmError(f"cannot read patch {path}: {e}") from e
        try:
            return cls(tensors=tensors, concepts=meta["concepts"], method=meta["method"], config=meta["config"],
                       fingerprints=meta["fingerprints"], info=meta.get("info", {}))
        except KeyError as e:
            raise HirmError(f"{path} has damaged hirm metadata ({e}): re-make the patch") from e

    def summary(self) -> dict[str, Any]:
        """What `hirm inspect` prints."""
        return {
            "id": self.id,
            "concepts": self.concepts,
            "method": self.method,
            "components": {c: {"tensors": len(self.component_tensors(c)),
                               "fingerprint": self.fingerprints.get(c, "")} for c in self.components},
            "tensors": {k: list(v.shape) for k, v in sorted(self.tensors.items())},
            "bytes": self.nbytes,
            "dtype": sorted({str(v.dtype).replace("torch.", "") for v in self.tensors.values()}),
            "config": self.config,
            "info": self.info,
            "seconds": self.seconds,
        }


@contextmanager
def all_applied(patches: Iterable[Patch], target: Any):
    """`with all_applied(patches, pipe): ...` applies the patches in order for the block (a patch made on an
    already patched model checks the fingerprint the earlier ones make) and always removes every one applied."""
    with ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch.applied(target))
        yield target


@dataclass
class AppliedPatch:
    """Handle returned by `Patch.apply`: `.remove()` undoes it."""

    patch: Patch
    components: dict[str, torch.nn.Module]

    def remove(self) -> None:
        self.patch.remove(self.components)
