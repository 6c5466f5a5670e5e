"""The paper's evaluation protocols on real checkpoints: `hirm eval --protocol nudity|coco|unlearncanvas`.

Each protocol is a small dataclass (its options) in its own module; `runner.run_protocol` is the one loop that
generates, scores, shards and resumes for all of them; `report.write_report` turns a run folder into HTML.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from hirm.errors import HirmError
from hirm.eval.protocols.base import Protocol
from hirm.eval.protocols.coco import Coco
from hirm.eval.protocols.nudity import Nudity
from hirm.eval.protocols.unlearncanvas import UnlearnCanvas

PROTOCOLS: dict[str, type[Protocol]] = {p.name: p for p in (Nudity, Coco, UnlearnCanvas)}


def make_protocol(name: str, **options: Any) -> Protocol:
    """The protocol `name` with the given options; options it does not take are an error, not silently dropped."""
    if name not in PROTOCOLS:
        raise HirmError(f"--protocol {name!r}: choose one of {', '.join(PROTOCOLS)}")
    cls = PROTOCOLS[name]
    names = {f.name for f in fields(cls)}
    given = {k: v for k, v in options.items() if v is not None}
    extra = sorted(k for k in given if k not in names)
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise HirmError(f"{flags} does not apply to --protocol {name} (it takes: "
                        f"{', '.join('--' + f.replace('_', '-') for f in sorted(names)) or 'no options'})")
    return cls(**given)


__all__ = ["PROTOCOLS", "Protocol", "make_protocol"]
