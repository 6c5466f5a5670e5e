"""The one error type hirm raises for bad input; the CLI prints its message on one line and exits 2."""


class HirmError(Exception):
    """A user-facing problem, with a message that names it and the fix."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM while a CLI command runs, so atomic writes clean up as on Ctrl-C;
    the CLI exits 143."""
