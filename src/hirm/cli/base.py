"""What every `hirm` command shares: the Typer app, one-line errors and exit codes, option types."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from hirm.errors import HirmError, Terminated
from hirm.io import write_error
from hirm.patch import Patch

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Erase concepts from text-to-image diffusion models (HiRM) as small safety patches.")

Model = Annotated[str, typer.Option("--model", "-m", help="diffusers pipeline folder, text-encoder folder, "
                                    "cached hub id, or 'minicanvas'")]
DEVICE_HELP = "auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps"
Device = Annotated[str, typer.Option(help=DEVICE_HELP)]
Only = Annotated[list[str] | None, typer.Option(
    "--only", help="apply only this component of each patch (repeatable), e.g. text_encoder: a --robust patch's "
                   "text half on a model without its denoiser half (Flux: the SD patch's CLIP half)")]


_DEBUG = {"on": False}
# commands whose outputs are kept and resumed when interrupted (the others write one file at the very end)
_RESUMABLE = {"eval_cmd", "compare", "attack", "demo", "report", "minicanvas_train"}


class _EchoHandler(logging.Handler):
    """hirm's log records on stderr, one message per line: the library logs, the CLI decides where it shows
    (stderr, so that --json keeps stdout to the JSON)."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(one_line(self.format(record)), err=True)


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="on a failure, also print the traceback")]
             = False,
             quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress messages (errors still show)")]
             = False) -> None:
    _DEBUG["on"] = debug or os.environ.get("HIRM_DEBUG", "") not in ("", "0")
    log = logging.getLogger("hirm")
    if not any(isinstance(h, _EchoHandler) for h in log.handlers):
        log.addHandler(_EchoHandler())
        log.propagate = False
    log.setLevel(logging.DEBUG if _DEBUG["on"] else logging.WARNING if quiet else logging.INFO)


def one_line(message: str) -> str:
    """`message` on one line with control characters escaped: messages quote file contents, which must not
    move the cursor or recolour the terminal."""
    return "".join(c if c.isprintable() else " " if c in "\r\n\t" else f"\\x{ord(c):02x}" for c in message)


def _fail(message: str, code: int = 2) -> None:
    if _DEBUG["on"]:
        import traceback

        traceback.print_exc()
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def handles_errors(fn):
    """One-line message and exit 2 for every documented failure (HirmError, and the OSErrors of reading input),
    130 on Ctrl-C and 143 on SIGTERM at any moment; `--debug` adds the traceback. Outputs are written atomically,
    so an interrupted command leaves no half-written file."""
    from hirm._signals import EXIT_INTERRUPTED, EXIT_TERMINATED, during_command

    kept = ("; finished files are kept and none is half-written: re-run the same command to resume"
            if fn.__name__ in _RESUMABLE else "; nothing was written")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with during_command():
                return fn(*args, **kwargs)
        except HirmError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted" + kept, code=EXIT_INTERRUPTED)
        except Terminated:
            _fail("terminated" + kept, code=EXIT_TERMINATED)
        except OSError as e:
            if e.errno in (28, 122):  # ENOSPC, EDQUOT
                _fail(str(write_error(e.filename or "a file", e)))
            _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))

    return wrapper


def quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    dlog.disable_progress_bar()


def read_lines(path: Path, option: str) -> list[str]:
    """The non-empty lines of a list file, `#` comments dropped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise HirmError(f"{option} {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        raise HirmError(f"{option} {path}: not a UTF-8 text file") from None
    entries = [line.split("#", 1)[0].strip() for line in lines]
    if not any(entries):
        raise HirmError(f"{option} {path}: nothing in it (one entry per line)")
    return [e for e in entries if e]


def load_patches(paths: list[Path] | None, only: list[str] | None = None) -> list:
    """The patch files, each cut to the components `only` names (all when None)."""
    patches = [Patch.load(p) for p in paths or []]
    if not only:
        return patches
    for path, p in zip(paths or [], patches, strict=True):
        if not set(only) & set(p.components):
            raise HirmError(f"--only {', '.join(only)}: {path} edits none of these (it edits "
                            f"{', '.join(p.components)})")
    return [p.only(only) for p in patches]


def parse_seeds(seeds: str) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        raise HirmError(f"--seeds {seeds!r}: give integers separated by commas, e.g. 0,1") from None
    if not out:
        raise HirmError("--seeds is empty: give at least one seed, e.g. 0")
    return out
