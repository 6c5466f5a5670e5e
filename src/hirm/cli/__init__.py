"""The `hirm` command line (`hirm.cli:app`): one module per group of commands, on the shared `base`."""

# each module registers its commands on `app`, in the order `hirm --help` lists them
from hirm.cli import erase, eval, attack, minicanvas, ui  # noqa: F401, I001
from hirm.cli.base import app


def main() -> None:  # pragma: no cover
    from hirm._signals import install_startup

    install_startup()
    app(prog_name="hirm")


__all__ = ["app", "main"]
