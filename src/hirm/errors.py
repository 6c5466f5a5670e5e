"""The one error type hirm raises for bad input; the CLI prints its message on one line and exits 2."""


class HirmError(ValueError):
    """A user-facing problem, with a message that names it and the fix. A ValueError, as Python's convention for
    bad input: code that catches ValueError to report foreign data must let a HirmError through first."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM while a CLI command runs, so atomic writes clean up as on Ctrl-C;
    the CLI exits 143."""
