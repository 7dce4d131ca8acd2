"""The CLI edge: the Typer app, shared option parsing and rendering, one module per command."""
from varbench.cli.app import app, main

__all__ = ["app", "main"]
