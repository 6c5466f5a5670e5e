"""The loop every protocol shares: generate each prompt's image with and without the patch, score it, write both
as soon as they exist; shard over processes; resume; then aggregate.

Run folder (the contract `hirm report` reads):
    run.json                      what the run is (protocol, model, patch, prompts, settings); a re-run must match
    images/{variant}/{key}.png    variant = base | erased
    records/{variant}/{key}.json  prompt, seed, guidance and the protocol's scores for that image
    metrics.json                  the protocol's figures per variant, written once every image is done

An image counts as done when its record parses and its PNG opens, so an interrupted run (or a corrupt file) is
redone item by item. Items are split over processes by index (`torchrun` / `accelerate launch`, read through
accelerate's `PartialState`), so any number of processes covers the same set.

Same images whatever the number of processes, by construction: a CPU kernel's float result depends on how many
threads split its sums (1 and 2 threads differ in the last bits of a pixel, which can round to the next PNG
level), so every process computes at the run's recorded thread count (`threads`; the first run's
`torch.get_num_threads()` unless given) and gives the caller's count back afterwards. run.json records it with
the device and the torch / diffusers / transformers versions; a re-run that differs in any of them is refused.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from hirm.encoders import dtype_name, load_pipeline, resolve_device, resolve_dtype
from hirm.errors import HirmError
from hirm.eval.protocols.base import Protocol
from hirm.eval.protocols.prompts import Item
from hirm.generate import sample
from hirm.images import save_atomic, write_text_atomic
from hirm.io import check_format_version, run_folder_lock, safe_name
from hirm.patch import Patch

SCHEDULERS = {"ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "lms": "LMSDiscreteScheduler",
              "euler": "EulerDiscreteScheduler"}


RUN_FORMAT_VERSION = "1"  # run.json's format_version: a newer major one (a newer hirm's run folder) is refused


def image_path(run_dir: Path, variant: str, key: str) -> Path:
    """Where an image lives; `variant` and `key` must be plain file names (they may come from files)."""
    return Path(run_dir) / "images" / safe_name(variant, "variant") / f"{safe_name(key, 'key')}.png"


def record_path(run_dir: Path, variant: str, key: str) -> Path:
    return Path(run_dir) / "records" / safe_name(variant, "variant") / f"{safe_name(key, 'key')}.json"


def read_record(run_dir: Path, variant: str, item: Item) -> dict | None:
    """The item's record if both it and its image are whole and match the item, else None (to be redone)."""
    try:
        record = json.loads(record_path(run_dir, variant, item.key).read_text())
        with Image.open(image_path(run_dir, variant, item.key)) as im:
            im.verify()
    except (OSError, ValueError, SyntaxError, RecursionError):  # missing, truncated or corrupt
        return None
    if not isinstance(record, dict) or "scores" not in record or record.get("prompt") != item.prompt \
            or record.get("seed") != item.seed:
        return None
    return record


def _path_or_name(value) -> str | None:
    """An existing path as an absolute one (so a resume from another folder matches), else the name as given."""
    if value is None:
        return None
    return str(Path(value).resolve()) if Path(value).exists() else str(value)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# keys hirm did not always record: a run.json written before them is not compared on them
_LATER_KEYS = ("versions", "settings.device", "settings.threads", "settings.dtype")


def _versions() -> dict[str, str]:
    """The libraries whose kernels compute the images (a new version may round differently)."""
    import diffusers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def _check_or_write_spec(run_dir: Path, spec: dict, state, recorded_defaults: tuple[str, ...] = ()) -> dict:
    """Write run.json on a new run; on a re-run, refuse settings that differ from the finished part. A setting in
    `recorded_defaults` was not given on this command line: it takes the run's recorded value. Returns the spec."""
    path = Path(run_dir) / "run.json"
    if state.is_main_process and not path.exists():
        if run_dir.exists() and any(p.name != "run.json" for p in run_dir.iterdir()):
            raise HirmError(f"--out {run_dir} is not empty and has no run.json: choose a new folder")
        write_text_atomic(json.dumps(spec, indent=2), path)
    state.wait_for_everyone()
    old = _read_spec(run_dir, path)
    old_settings = old.get("settings", {})
    spec = {**spec, "settings": {**spec["settings"], **{k: old_settings[k] for k in recorded_defaults
                                                         if k in old_settings}}}
    diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k) and k not in ("settings",
                                                                                               "format_version"))
    diff += sorted(f"settings.{k}" for k in set(old_settings) | set(spec["settings"])
                   if old_settings.get(k) != spec["settings"].get(k))
    diff = [k for k in diff if not (k in _LATER_KEYS and _missing(old, k))]
    if diff:
        first = diff[0]
        was = old.get(first) if "." not in first else old_settings.get(first.split(".", 1)[1])
        now = spec.get(first) if "." not in first else spec["settings"].get(first.split(".", 1)[1])
        raise HirmError(f"--out {run_dir} holds a run with other settings ({', '.join(diff)}; e.g. {first} was "
                        f"{was!r}, now {now!r}): re-run with the same settings and library versions to resume, "
                        "or choose a new --out")
    return spec


def _read_spec(run_dir: Path, path: Path) -> dict:
    """run.json of an existing run, checked: a JSON object of this hirm's format (a newer major version, written
    by a newer hirm, is refused in one line rather than misread)."""
    redo = "choose a new --out (or restore the file)"
    try:
        old = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:
        raise HirmError(f"--out {run_dir}: run.json is not valid JSON ({type(e).__name__}): {redo}") from None
    if not isinstance(old, dict) or not isinstance(old.get("settings", {}), dict):
        raise HirmError(f"--out {run_dir}: run.json is not a run's settings: {redo}")
    check_format_version(old.get("format_version", RUN_FORMAT_VERSION), RUN_FORMAT_VERSION,
                         f"--out {run_dir}: run.json is run folder format")
    return old


def _missing(spec: dict, key: str) -> bool:
    if "." in key:
        outer, inner = key.split(".", 1)
        return inner not in spec.get(outer, {})
    return key not in spec


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `n` (None: left alone) inside the block, the caller's one after."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _set_scheduler(pipe, name: str) -> None:
    """Swap in the protocol's sampler for UNet models (SD 1.x/2.x, SDXL); flow-matching transformers (SD3, Flux)
    keep theirs, which is the only one they are trained for."""
    import diffusers

    if name != "keep" and getattr(pipe, "unet", None) is not None:
        pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)


def _one_writer(fn):
    """Hold the run folder's lock while `fn` writes it (`hirm.io.run_folder_lock`): a second run into the same
    folder stops in one line. The processes of one sharded run (RANK > 0) work under their main process's lock."""

    @functools.wraps(fn)
    def locked(protocol: Protocol, model: str, out: Path, *args, **kwargs):
        if os.environ.get("RANK", "0") != "0":
            return fn(protocol, model, out, *args, **kwargs)
        with run_folder_lock(out):
            return fn(protocol, model, out, *args, **kwargs)

    return locked


@_one_writer
def run_protocol(protocol: Protocol, model: str, out: Path, patch: Path | None = None, prompts: Path | None = None,
                 limit: int | None = None, steps: int | None = None, guidance: float | None = None,
                 scheduler: str | None = None, batch_size: int | None = None, threads: int | None = None,
                 progress: bool = True, device: str | None = None,
                 dtype: str | torch.dtype | None = None) -> dict[str, Any] | None:
    """Run `protocol` on `model` (and `model` + `patch`) into `out`; return the metrics on the main process.

    `threads`: torch's intra-op thread count on a CPU, for generation and scoring (default: the run's recorded
    count, or this process's current one for a new run); the caller's count is restored afterwards.
    `device`: "auto" / None (CUDA, then MPS, then the CPU), "cpu", "cuda" or "mps"; the processes of a sharded run
    take one GPU each. `dtype`: the pipeline's ("auto" / None: float16 on a GPU, bfloat16 for Flux, float32 on
    the CPU), recorded in run.json."""
    from accelerate import PartialState

    out = Path(out)
    if limit is not None and limit < 1:
        raise HirmError(f"--limit {limit}: give a positive number of prompts")
    if threads is not None and threads < 1:
        raise HirmError(f"--threads {threads}: give a positive number of CPU threads")
    scheduler = scheduler or protocol.scheduler
    if scheduler != "keep" and scheduler not in SCHEDULERS:
        raise HirmError(f"--scheduler {scheduler!r}: choose one of {', '.join(['keep', *SCHEDULERS])}")
    protocol.check()  # bad options and CSVs fail before minutes of model loading
    items = protocol.items(prompts, limit)
    loaded_patch = Patch.load(patch) if patch else None
    wanted = resolve_device(device)  # a device this machine lacks: an error before anything runs
    if wanted.index is not None:
        raise HirmError(f"--device {device}: a protocol run places its processes itself; choose GPUs with "
                        "CUDA_VISIBLE_DEVICES and pass --device cuda")
    state = PartialState(cpu=wanted.type == "cpu")
    cpu = state.device.type == "cpu"
    dtype = resolve_dtype(dtype, state.device, model)
    variants = ["base", "erased"] if loaded_patch else ["base"]
    steps = steps or protocol.steps
    spec = {
        "format_version": RUN_FORMAT_VERSION,
        "protocol": protocol.name, "model": _path_or_name(model), "patch": _path_or_name(patch),
        "patch_id": loaded_patch.id if loaded_patch else None, "variants": variants,
        "prompts_file": _path_or_name(prompts),
        "prompts_sha256": _sha256(prompts) if prompts else None, "n_prompts": len(items),
        "settings": {"steps": steps, "guidance": guidance, "default_guidance": protocol.guidance,
                     "scheduler": scheduler, "seed": protocol.seed, **protocol.settings(),
                     # a GPU computes the images; its runs keep the host's CPU thread count
                     "device": state.device.type, "dtype": dtype_name(dtype),
                     "threads": (threads or torch.get_num_threads()) if cpu else None},
        "versions": _versions(),
    }
    spec = _check_or_write_spec(out, spec, state, recorded_defaults=("threads",) if threads is None else ())
    threads = spec["settings"]["threads"]
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
    if cpu and progress and state.is_local_main_process and threads * local_processes > (os.cpu_count() or 1):
        tqdm.write(f"note: {local_processes} process(es) x {threads} threads (the run's) > {os.cpu_count()} CPUs: "
                   "slower than it could be, same images; a new run can choose --threads")
    with intra_op_threads(threads):
        return _run(protocol, model, out, items, loaded_patch, state, variants, steps, guidance, scheduler,
                    batch_size, progress, dtype)


def _run(protocol: Protocol, model: str, out: Path, items: list[Item], loaded_patch, state, variants: list[str],
         steps: int, guidance: float | None, scheduler: str, batch_size: int | None,
         progress: bool, dtype: torch.dtype) -> dict[str, Any] | None:
    pipe = load_pipeline(model, dtype=dtype).to(state.device)
    _set_scheduler(pipe, scheduler)
    protocol.load(state.device)
    batch_size = batch_size or (8 if state.device.type == "cuda" else 4)
    mine = items[state.process_index :: state.num_processes]
    for variant in variants:
        todo = [it for it in mine if read_record(out, variant, it) is None]
        if not todo:
            continue
        handle = loaded_patch.apply(pipe) if variant == "erased" else None
        desc = f"{protocol.name} {variant}" + (f" [{state.process_index + 1}/{state.num_processes}]"
                                               if state.num_processes > 1 else "")
        bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
        start = time.perf_counter()
        try:
            # one guidance per pipeline call: I2P gives each prompt its own
            guidance_of = functools.partial(_guidance, forced=guidance, protocol=protocol)
            for g, group in groupby(sorted(todo, key=guidance_of), key=guidance_of):
                group = list(group)
                for i in range(0, len(group), batch_size):
                    batch = group[i : i + batch_size]
                    images = sample(pipe, [it.prompt for it in batch], seeds=[it.seed for it in batch],
                                    steps=steps, guidance=g, batch_size=batch_size)
                    for it, im in zip(batch, images, strict=True):
                        save_atomic(im, image_path(out, variant, it.key))
                    for it, scores in zip(batch, protocol.score(batch, images), strict=True):
                        record = {"key": it.key, "prompt": it.prompt, "seed": it.seed, "guidance": g,
                                  **it.meta, "scores": scores}
                        write_text_atomic(json.dumps(record), record_path(out, variant, it.key))
                    bar.update(len(batch))
        finally:
            bar.close()
            if handle is not None:
                handle.remove()
        if progress:
            took = time.perf_counter() - start
            tqdm.write(f"{desc}: {len(todo)} images in {took:.1f} s ({len(todo) / took:.2f} img/s)")
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return aggregate(protocol, out, items, variants)


def _guidance(item: Item, forced: float | None, protocol: Protocol) -> float:
    if forced is not None:
        return forced
    return item.guidance if item.guidance is not None else protocol.guidance


def aggregate(protocol: Protocol, out: Path, items: list[Item], variants: list[str]) -> dict[str, Any]:
    """metrics.json from every record; refuses to summarise a run with images missing."""
    by_variant = {}
    for variant in variants:
        records = [read_record(out, variant, it) for it in items]
        missing = sum(r is None for r in records)
        if missing:
            raise HirmError(f"{missing} of {len(items)} {variant} images in {out} are missing or corrupt (a "
                            "process stopped early?): re-run the same command to finish them")
        by_variant[variant] = records
    metrics = {"protocol": protocol.name, "n_prompts": len(items),
               "variants": {v: protocol.summarize(items, rs) for v, rs in by_variant.items()}}
    metrics.update(protocol.compare(out, items, variants))
    write_text_atomic(json.dumps(metrics, indent=2), out / "metrics.json")
    return metrics


