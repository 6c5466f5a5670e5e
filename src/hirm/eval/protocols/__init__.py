"""The paper's evaluation protocols on real checkpoints: `hirm eval --protocol nudity|coco|unlearncanvas`.

Each protocol is a small dataclass (its options) in its own module; `runner.run_protocol` is the one loop that
generates, scores, shards and resumes for all of them; `report.write_report` turns a run folder into HTML.
"""

from __future__ import annotations

from hirm.eval.protocols.base import Protocol
from hirm.eval.protocols.coco import Coco
from hirm.eval.protocols.nudity import Nudity
from hirm.eval.protocols.unlearncanvas import UnlearnCanvas
from hirm.registry import Entry, Registry

# a protocol's dataclass is its config (its options are `hirm eval` flags); `runner.run_protocol` runs any of them
PROTOCOLS: Registry[Entry] = Registry(
    "protocol", [Entry(p.name, p, None, p.summary) for p in (Nudity, Coco, UnlearnCanvas)], flags=True)


__all__ = ["PROTOCOLS", "Protocol"]
