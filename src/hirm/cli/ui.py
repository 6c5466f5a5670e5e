"""`hirm ui`: erase concepts in the browser."""

from __future__ import annotations

from typing import Annotated

import typer

from hirm.cli.base import Model, app, handles_errors, quiet_libraries
from hirm.encoders import resolve_model_path
from hirm.errors import HirmError
from hirm.minicanvas import registry
from hirm.ui import launch, require_gradio


@app.command()
@handles_errors
def ui(
    model: Model = "minicanvas",
    host: Annotated[str, typer.Option(help="address to serve on (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to serve on")] = 7860,
) -> None:
    """A local web page (Gradio) to erase concepts: pick a model and method, type concepts, see before / after
    images of each concept and its nearest neighbours with the scores, download the patch or an export."""
    quiet_libraries()
    if model not in registry.NAMES and not (resolve_model_path(model) / "model_index.json").exists():
        raise HirmError(f"--model {model}: not a diffusers pipeline folder (no model_index.json); give a pipeline "
                        f"folder or one of {', '.join(registry.NAMES)}")
    if not 0 < port < 65536:
        raise HirmError(f"--port {port}: give a port between 1 and 65535, e.g. 7860")
    require_gradio()
    typer.echo(f"hirm ui: http://{host}:{port} (Ctrl-C to stop)")
    launch(model, host, port)
