"""hirm: erase a concept from a text-to-image diffusion model by misdirecting its CLIP text encoder's
high-level representation (HiRM, ICLR 2026), as a small safety patch."""

import os as _os
import sys as _sys

if _sys.argv and _os.path.basename(_sys.argv[0]) == "hirm":  # the `hirm` command: Ctrl-C while torch imports
    from hirm._signals import install_startup as _install_startup  # exits 130 in one line, not a traceback

    _install_startup()

# hirm.api imports the hirm.erase subpackage first, so `hirm.erase` ends up bound to the function
from hirm.api import erase
from hirm.encoders import TextEncoder, find_text_encoders, load_pipeline, load_text_encoders
from hirm.erase import METHODS, make_config
from hirm.errors import HirmError
from hirm.patch import Patch

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "HirmError",
    "Patch",
    "TextEncoder",
    "erase",
    "find_text_encoders",
    "load_pipeline",
    "load_text_encoders",
    "make_config",
]
