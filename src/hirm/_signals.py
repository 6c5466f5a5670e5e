"""Exit codes for signals at any moment of a `hirm` command: 130 on Ctrl-C, 143 on SIGTERM, one line, no traceback.

While the command's own code runs (`during_command`), SIGINT raises KeyboardInterrupt and SIGTERM raises
`Terminated`, so every atomic write removes its temporary file on the way out. Before that (importing torch,
parsing arguments) and after it, nothing is being written and the process exits at once (`install_startup`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hirm.errors import Terminated

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def _exit_now(code: int, message: str) -> Callable:
    def handler(signum, frame):
        try:
            sys.stderr.write(f"error: {message}\n")
            sys.stderr.flush()
        finally:
            os._exit(code)

    return handler


def _raise_terminated(signum, frame):
    raise Terminated()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install_startup() -> None:
    """Ctrl-C / SIGTERM before a command starts (start-up imports, argument parsing): one line and exit."""
    if _main_thread():
        signal.signal(signal.SIGINT, _exit_now(EXIT_INTERRUPTED, "interrupted; nothing was written"))
        signal.signal(signal.SIGTERM, _exit_now(EXIT_TERMINATED, "terminated; nothing was written"))


@contextmanager
def during_command() -> Iterator[None]:
    """SIGINT -> KeyboardInterrupt and SIGTERM -> Terminated for the block; the previous handlers after it."""
    if not _main_thread():
        yield
        return
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    old_term = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int if old_int is not None else signal.default_int_handler)
        signal.signal(signal.SIGTERM, old_term if old_term is not None else signal.SIG_DFL)
