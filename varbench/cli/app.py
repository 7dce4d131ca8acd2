"""The ``varbench`` Typer app: auto-registers ``varbench/cli/commands/*`` and maps errors to exit codes.

Exit codes (DESIGN "CLI contract"): 0 ok, 1 regression/failed measurement, 2 bad input, 3 environment
unavailable, 130 interrupted. Every error is one line on stderr; no traceback for expected failures.
"""
from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import pkgutil
import sys
from typing import Annotated, Any, Iterator

import typer
from rich.text import Text
from typer.core import TyperGroup

from varbench import __version__
from varbench.cli import commands
from varbench.cli.common import err_console
from varbench.errors import VarbenchError

log = logging.getLogger(__name__)

def _error_line(message: str) -> None:
    """One red ``error: ...`` line on stderr; Text (not markup) so brackets in messages survive."""
    err_console.print(Text(f"error: {message}", style="red"), soft_wrap=True)


class VarbenchGroup(TyperGroup):
    """Catches errors inside ``invoke`` so both ``main()`` and ``CliRunner.invoke(app, ...)`` see exit codes."""

    def make_context(self, info_name: str | None, args: list[str], parent: typer.Context | None = None,
                     **extra: Any) -> typer.Context:
        with _one_line_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: typer.Context) -> Any:
        with _one_line_errors():
            return super().invoke(ctx)


def _is_checkpoint_error(e: BaseException) -> bool:
    """model.checkpoint.CheckpointError, checked without importing torch (if the module is absent, it isn't one)."""
    mod = sys.modules.get("model.checkpoint")
    return mod is not None and isinstance(e, mod.CheckpointError)


def _is_parse_error(e: BaseException) -> bool:
    """Typer's own usage errors (bad option value, unknown command), recognised by behaviour: Typer vendors its
    parser privately, so the class is not public API. Its no-arguments help 'error' keeps Typer's handling."""
    return (getattr(e, "exit_code", None) == 2 and callable(getattr(e, "format_message", None))
            and type(e).__name__ != "NoArgsIsHelpError")


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """VarbenchError -> its exit code, click usage error -> 2, Ctrl-C -> 130; each as one stderr line."""
    try:
        yield
    except VarbenchError as e:
        _error_line(e.message)
        raise typer.Exit(e.exit_code) from None
    except ValueError as e:
        if not _is_checkpoint_error(e):
            _internal_error(e)
        _error_line(str(e))                     # bad/missing weights file: bad input, exit 2
        raise typer.Exit(2) from None
    except OSError as e:
        code, message = os_error(e)
        _error_line(message)
        raise typer.Exit(code) from None
    except Exception as e:
        if _is_parse_error(e):
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _error_line(f"{e.format_message()}{hint}")
            raise typer.Exit(2) from None
        if isinstance(e, (typer.Exit, typer.Abort)) or type(e).__module__.startswith(("click", "typer")):
            raise
        _internal_error(e)
    except KeyboardInterrupt:
        _error_line("interrupted")
        raise typer.Exit(130) from None


def _internal_error(e: Exception) -> None:
    """Last resort: a bug is still one line and exit 1; the traceback goes to the log (shown with --verbose)."""
    log.info("unexpected error", exc_info=True)
    first = (str(e).strip().splitlines() or [""])[0]
    _error_line(f"internal error: {type(e).__name__}: {first} (rerun with --verbose for the traceback)")
    raise typer.Exit(1) from None


NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def os_error(e: OSError) -> tuple[int, str]:
    """An OSError that reached the app: a full disk is the machine's (exit 3), any other failing path is the
    user's input (exit 2: unwritable --out, a directory where a file was expected, ...)."""
    where = f" {e.filename}" if e.filename else ""
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno in NO_SPACE:
        return 3, f"cannot write{where}: {reason} (free some space or choose another --out)"
    return 2, f"cannot use{where}: {reason}"


app = typer.Typer(
    cls=VarbenchGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Profile, benchmark and guard VAR / VARiant visual autoregressive models.",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"varbench {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log library progress (INFO) to stderr.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Profile, benchmark and guard VAR / VARiant visual autoregressive models."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def register_commands(target: typer.Typer) -> list[str]:
    """Import every ``varbench.cli.commands.*`` module and call its ``register(app)``; returns module names.

    A module that fails to import is reported on stderr and skipped, so one broken command cannot take
    the whole CLI down (its own tests will still fail loudly).
    """
    names = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        except Exception as e:  # noqa: BLE001 - reported, never silent
            err_console.print(Text(f"warning: command module {info.name!r} failed to import: {e}",
                                   style="yellow"), soft_wrap=True)
            continue
        reg = getattr(mod, "register", None)
        if callable(reg):
            reg(target)
            names.append(info.name)
    return names


register_commands(app)


def main() -> None:
    """Console-script entry point (``varbench``, ``python -m varbench``)."""
    try:
        app()
    except VarbenchError as e:  # raised outside a command (e.g. during registration)
        _error_line(e.message)
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        _error_line("interrupted")
        raise SystemExit(130) from None
