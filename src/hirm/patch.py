"""Safety patches: the changed tensors of an erasure, as one small safetensors file with metadata.

A patch holds the new values of only the tensors an erasure changed, keyed `"{component}::{parameter}"`
(component = the pipeline's name for the model: `text_encoder`, `text_encoder_2`, `unet`, ...), plus
metadata: format version, concept(s), method and its full config, and per component a sha256 fingerprint
of the base weights it was made from (hashed in float16, so float16 and float32 loads of one checkpoint match;
patches made through `hirm.erase` / `hirm erase` also record one hashed in bfloat16, so that bfloat16 loads match
too). Applying copies the tensors in place (zero inference cost), cast to the model's dtype and device, after
checking the fingerprint; removing restores the originals kept at apply time.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Iterable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from hirm.encoders import TextEncoder
from hirm.errors import HirmError
from hirm.io import atomic_file, check_format_version

FORMAT = "hirm-patch"
FORMAT_VERSION = "1"
SEP = "::"
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fingerprint(module: torch.nn.Module, dtype: torch.dtype = torch.float16) -> str:
    """sha256 of a model's weights, independent of the dtype it was loaded in.

    Tensors are hashed as fp16 (name, shape, bytes) in name order, so a pipeline loaded in fp16 or fp32 from
    the same checkpoint has the same fingerprint, while any other weights do not. A bfloat16 load rounds
    differently (fewer mantissa bits): `dtype=torch.bfloat16` hashes the weights rounded to bfloat16 instead,
    which a bfloat16 load and an fp32 (or fp16-only) checkpoint share.

    Hashed once per module: the answer is kept until a weight changes, which PyTorch tells by each tensor's
    storage and version counter (bumped by every in-place write: optimiser steps, `copy_`, a patch applied or
    removed; a tensor replaced has new storage). Only a write through `param.data`, which PyTorch does not
    count, goes unseen: call `forget_fingerprints(module)` after one.
    """
    tensors = [(n, t) for n, t in sorted(module.state_dict().items()) if torch.is_floating_point(t)]
    key = tuple((n, t.data_ptr(), t._version, t.dtype, tuple(t.shape), str(t.device)) for n, t in tensors)
    known = _FINGERPRINTS.setdefault(module, {})
    if dtype in known and known[dtype][0] == key:
        return known[dtype][1]
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if dtype == torch.float16:
            h.update(t.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
        else:
            h.update(_raw_bytes(t.detach().to("cpu", dtype)))
    known[dtype] = (key, h.hexdigest())
    return known[dtype][1]


def forget_fingerprints(module: torch.nn.Module) -> None:
    """Drop `module`'s kept fingerprints, so the next `fingerprint` reads its weights again."""
    _FINGERPRINTS.pop(module, None)


# module -> {hash dtype: (what its weights were when hashed, fingerprint)}
_FINGERPRINTS: weakref.WeakKeyDictionary[torch.nn.Module, dict[torch.dtype, tuple[tuple, str]]] = (
    weakref.WeakKeyDictionary())


def module_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The dtype of a model's first floating-point parameter (None if it has none)."""
    return next((p.dtype for p in module.parameters() if torch.is_floating_point(p)), None)


def _raw_bytes(t: torch.Tensor) -> bytes:
    """A tensor's bytes in any dtype (numpy has no bfloat16)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _check_fields(concepts: Any, method: Any, config: Any, fingerprints: Any, info: Any, source: str,
                  bf16_fingerprints: Any = None) -> None:
    """The metadata types every reader of a patch relies on (`hirm inspect`, evaluations, merges)."""
    def bad(field: str, want: str) -> HirmError:
        return HirmError(f"{source} has damaged hirm metadata ({field} is not {want}): re-make the patch")

    bf16_fingerprints = {} if bf16_fingerprints is None else bf16_fingerprints

    if not isinstance(concepts, list) or not concepts or not all(isinstance(c, str) for c in concepts):
        raise bad("concepts", "a non-empty list of strings")
    if not isinstance(method, str) or not method:
        raise bad("method", "a non-empty string")
    if not isinstance(config, dict):
        raise bad("config", "an object")
    if not isinstance(fingerprints, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in fingerprints.items()):
        raise bad("fingerprints", "an object of strings")
    if not isinstance(info, dict):
        raise bad("info", "an object")
    if not isinstance(bf16_fingerprints, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                          for k, v in bf16_fingerprints.items()):
        raise bad("bf16_fingerprints", "an object of strings")


def components_of(target: Any) -> dict[str, torch.nn.Module]:
    """Name -> module for a diffusers pipeline, a `TextEncoder` list, or a dict of modules."""
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


@dataclass(eq=False)  # tensors have no truth value: two patches are the same object or not (compare fingerprints)
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
    # per component, the base weights' fingerprint hashed in bfloat16: lets the patch apply to bfloat16 loads
    bf16_fingerprints: dict[str, str] = field(default_factory=dict)

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
            h.update(_raw_bytes(self.tensors[k]))
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
        bf16: dict[str, str] = {}
        seconds: dict[str, float] = {}
        for p in patches:
            overlap = sorted(set(tensors) & set(p.tensors))
            if overlap:
                raise HirmError(f"cannot merge: two patches both edit {overlap[0]}; apply them in turn instead")
            for c, f in p.fingerprints.items():
                if fingerprints.setdefault(c, f) != f:
                    raise HirmError(f"cannot merge: the patches were made from different {c} weights")
            for c, f in p.bf16_fingerprints.items():
                bf16.setdefault(c, f)
            tensors.update(p.tensors)
            for c, s in p.seconds.items():
                seconds[c] = seconds.get(c, 0.0) + s
        concepts = list(dict.fromkeys(c for p in patches for c in p.concepts))
        return cls(tensors=tensors, concepts=concepts, method="+".join(p.method for p in patches),
                   config={p.method: p.config for p in patches}, fingerprints=fingerprints,
                   info={p.method: p.info for p in patches}, seconds=seconds,
                   bf16_fingerprints={c: f for c, f in bf16.items() if c in fingerprints})

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
                   seconds={c: sum(p.seconds.get(c, 0.0) for p in patches) for c in prints},
                   bf16_fingerprints={c: f for c, f in patches[0].bf16_fingerprints.items()
                                      if all(p.bf16_fingerprints.get(c) == f for p in patches)})

    def only(self, components: list[str]) -> Patch:
        """The part of this patch that edits `components` (e.g. only its denoiser edit)."""
        keep = [c for c in self.components if c in components]
        return Patch(tensors={k: v for k, v in self.tensors.items() if k.split(SEP, 1)[0] in keep},
                     concepts=list(self.concepts), method=self.method, config=self.config,
                     fingerprints={c: f for c, f in self.fingerprints.items() if c in keep}, info=self.info,
                     bf16_fingerprints={c: f for c, f in self.bf16_fingerprints.items() if c in keep})

    # ------------------------------------------------------------------ apply / remove

    def validate(self, source: str = "patch") -> None:
        """Refuse contents no erasure makes: no tensors, names that are not `component::parameter`, tensors that
        are not floating point, NaN or infinite values (a NaN patch draws black images, which an evaluation would
        score as a perfect erasure), and metadata of the wrong types."""
        if not isinstance(self.tensors, dict) or not self.tensors:
            raise HirmError(f"{source} holds no tensors: it changes nothing; re-make it")
        for k, t in self.tensors.items():
            component, sep, name = k.partition(SEP) if isinstance(k, str) else ("", "", "")
            if not sep or not component or not name:
                raise HirmError(f"{source}: tensor name {k!r:.80} is not 'component{SEP}parameter'; re-make the patch")
            if not isinstance(t, torch.Tensor) or t.dtype not in FLOAT_DTYPES:
                kind = str(t.dtype).replace("torch.", "") if isinstance(t, torch.Tensor) else type(t).__name__
                raise HirmError(f"{source}: tensor {k} is {kind}; a patch holds floating-point weights "
                                "(float16, bfloat16, float32 or float64)")
            if t.numel() and not bool(torch.isfinite(t).all()):
                raise HirmError(f"{source}: tensor {k} holds NaN or infinite values, which would break the model; "
                                "re-make the patch")
        _check_fields(self.concepts, self.method, self.config, self.fingerprints, self.info, source,
                      self.bf16_fingerprints)

    def apply(self, target: Any, check: bool = True) -> AppliedPatch:
        """Write the patched tensors into `target`'s modules in place. Refuses weights it was not made from.

        All or nothing: every tensor is checked first (its component exists and has the base fingerprint, the
        parameter exists, shapes match, the value fits the model's dtype), then the model is changed; a failure
        while changing it restores what was already copied."""
        self.validate()
        comps = components_of(target)
        missing = [c for c in self.components if c not in comps]
        if missing:
            have = [c for c in self.components if c in comps]
            hint = (f"; apply the part it has alone with --only {' --only '.join(have)} (Patch.only)" if have else "")
            raise HirmError(
                f"patch edits {missing[0]!r} but the model has no such component (it has: {', '.join(comps)}){hint}"
            )
        if check:
            for c in self.components:
                self._check_fingerprint(c, comps[c])
        plan: list[tuple[str, str, torch.nn.Parameter, torch.Tensor]] = []
        for c in self.components:
            params = dict(comps[c].named_parameters())
            for n, t in self.component_tensors(c).items():
                p = params.get(n)
                if p is None:
                    raise HirmError(f"patch tensor {c}{SEP}{n} does not exist in this model's {c}")
                if p.shape != t.shape:
                    raise HirmError(f"patch tensor {c}{SEP}{n} has shape {tuple(t.shape)}, model has "
                                    f"{tuple(p.shape)}")
                if not torch.is_floating_point(p):
                    raise HirmError(f"this model's {c}{SEP}{n} is {str(p.dtype).replace('torch.', '')}; a patch "
                                    "replaces floating-point weights only")
                value = t.detach().to(device=p.device, dtype=p.dtype)
                if value.numel() and not bool(torch.isfinite(value).all()):
                    raise HirmError(f"patch tensor {c}{SEP}{n} does not fit this model's "
                                    f"{str(p.dtype).replace('torch.', '')} weights (it overflows to infinity)")
                plan.append((c, n, p, value))
        originals: dict[str, dict[str, torch.Tensor]] = {c: {} for c in self.components}
        try:
            with torch.no_grad():
                for c, n, p, value in plan:
                    originals[c][n] = p.detach().clone()
                    p.copy_(value)
        except BaseException:
            params_of = {c: dict(comps[c].named_parameters()) for c in originals}
            with torch.no_grad():
                for c, saved in originals.items():
                    for n, t in saved.items():
                        params_of[c][n].copy_(t)
            raise
        pid = self.id
        for c in self.components:
            _ORIGINALS.setdefault(comps[c], []).append((pid, originals[c]))
        return AppliedPatch(self, comps)

    def _check_fingerprint(self, c: str, module: torch.nn.Module) -> None:
        """Refuse `module` unless it holds the weights this patch was made from: the float16-hashed fingerprint
        (float16 and float32 loads), or for a bfloat16 model the bfloat16-hashed one."""
        got = fingerprint(module)
        if got == self.fingerprints.get(c):
            return
        if module_dtype(module) == torch.bfloat16:
            want = self.bf16_fingerprints.get(c)
            if want is None:
                raise HirmError(f"this model's {c} is bfloat16 and the patch records no bfloat16 fingerprint for it "
                                "(made before hirm recorded one, or outside hirm.erase): load the model in float16 "
                                "or float32, or re-make the patch")
            if fingerprint(module, torch.bfloat16) == want:
                return
        raise HirmError(
            f"patch was made for {c} with fingerprint {self.fingerprints.get(c, '?')[:12]}, but this "
            f"model's {c} has {got[:12]}: apply it to the model it was made from"
        )

    def add_bf16_fingerprints(self, target: Any) -> Patch:
        """Record the bfloat16-hashed fingerprint of each component this patch edits, from `target` (the base
        model it was made from, as `components_of` reads it), so that it also applies to bfloat16 loads."""
        comps = components_of(target)
        self.bf16_fingerprints = {**self.bf16_fingerprints,
                                  **{c: fingerprint(comps[c], torch.bfloat16) for c in self.components if c in comps}}
        return self

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
        if self.bf16_fingerprints:  # an older hirm reads the file and ignores it
            body["bf16_fingerprints"] = self.bf16_fingerprints
        return {FORMAT: json.dumps(body, sort_keys=True)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a temp file in the same folder, then rename (never a half-written patch)."""
        path = Path(path)
        self.validate()
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}
        try:
            with atomic_file(path) as tmp:
                save_file(tensors, str(tmp), metadata=self.metadata())
        except SafetensorError as e:
            raise HirmError(f"cannot write {path}: {e}") from e
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Patch:
        """Read and check a patch file; every problem is one HirmError naming the file (see docs/security.md)."""
        path = Path(path)
        if path.is_dir():
            raise HirmError(f"{path} is a folder, not a patch file: pass the .safetensors file itself")
        if not path.is_file():
            raise HirmError(f"patch file {path} does not exist")
        try:
            with safe_open(str(path), "pt") as f:
                raw = (f.metadata() or {}).get(FORMAT)
                if raw is None:
                    raise HirmError(f"{path} is a safetensors file but not a hirm patch (no '{FORMAT}' metadata)")
                try:
                    meta = json.loads(raw)
                except (json.JSONDecodeError, RecursionError) as e:
                    raise HirmError(f"{path} has damaged hirm metadata ({type(e).__name__}): re-make the patch") from e
                if not isinstance(meta, dict):
                    raise HirmError(f"{path} has damaged hirm metadata (not a JSON object): re-make the patch")
                check_format_version(meta.get("format_version"), FORMAT_VERSION, f"{path} is hirm patch format")
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        except SafetensorError as e:
            raise HirmError(f"{path} is not a readable safetensors file ({e}): it is corrupt or truncated, "
                            "re-make or re-copy it") from e
        except HirmError:  # already names the problem and the fix
            raise
        except (OSError, ValueError, TypeError) as e:
            raise HirmError(f"cannot read patch {path}: {e}") from e
        missing = [k for k in ("concepts", "method", "config", "fingerprints") if k not in meta]
        if missing:
            raise HirmError(f"{path} has damaged hirm metadata (no {missing[0]!r}): re-make the patch")
        patch = cls(tensors=tensors, concepts=meta["concepts"], method=meta["method"], config=meta["config"],
                    fingerprints=meta["fingerprints"], info=meta.get("info", {}),
                    bf16_fingerprints=meta.get("bf16_fingerprints", {}))
        patch.validate(source=str(path))
        absent = [c for c in patch.components if c not in patch.fingerprints]
        if absent:
            raise HirmError(f"{path} has no base fingerprint for {absent[0]}: re-make the patch")
        return patch

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
