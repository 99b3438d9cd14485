"""The ``dftflow`` command: one sub-app per noun, one error boundary."""

from __future__ import annotations

import sys
import traceback
from typing import Annotated

import typer
from rich.markup import escape

from dftflow import __version__
from dftflow.cli import (
    accel,
    build,
    candidates,
    dashboard,
    dataset,
    inputs,
    jobs,
    ml,
    models,
    nscf,
    profiles,
    recipes,
    submit,
)
from dftflow.cli.common import err_console
from dftflow.errors import DftflowError

app = typer.Typer(
    name="dftflow",
    help="High-throughput DFT workflows and charge-density datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dftflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """High-throughput DFT workflows and charge-density datasets."""
    _state["debug"] = debug


app.command("build-dataset")(build.build_dataset)
app.command("submit")(submit.submit)
app.command("rocket", hidden=True)(submit.rocket)
app.command("fw-rocket", hidden=True)(submit.fw_rocket)
app.command("fw-migrate")(submit.fw_migrate)
app.command("train")(ml.train)
app.command("predict")(ml.predict)
app.command("evaluate")(ml.evaluate)
app.command("accel-eval")(accel.accel_eval)
app.command("nscf-eval")(nscf.nscf_eval)
app.command("status")(jobs.status)
app.command("retry")(jobs.retry)
app.command("dashboard")(dashboard.dashboard)
app.command("harvest")(dataset.harvest)
app.add_typer(dataset.app, name="dataset")
app.add_typer(candidates.app, name="candidates")
app.add_typer(recipes.app, name="recipes")
app.add_typer(profiles.app, name="profiles")
app.add_typer(inputs.app, name="inputs")
app.add_typer(models.app, name="models")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn errors into a one-line message and exit code 1.

    Usage errors are reported by typer itself (exit code 2); every other failure
    becomes ``error: <message>`` naming the file, key or value at fault.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    _state["debug"] = "--debug" in args
    try:
        app(args=args, prog_name="dftflow")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        err_console.print("interrupted; re-run the same command to continue where it stopped")
        return 130
    except Exception as exc:  # the error boundary: every failure becomes one clear line
        if _state["debug"]:
            traceback.print_exc()
        message = str(exc) if isinstance(exc, DftflowError) else f"{type(exc).__name__}: {exc}"
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        if not _state["debug"]:
            err_console.print("(run with --debug for the traceback)", style="dim")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
