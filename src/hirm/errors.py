"""The one error type hirm raises for bad input; the CLI prints its message on one line and exits 2."""


class HirmError(Exception):
    """A user-facing problem, with a message that names it and the fix."""
