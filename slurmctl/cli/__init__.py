"""The `slurmctl` command line. Global options and their environment fallbacks live here, once.

A user's mistake (`UserError`) is printed as one line on stderr with exit code 2, never a
traceback.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from slurmctl.backends import Backend, open_local
from slurmctl.errors import IntegrityError, SlurmctlError, UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


@dataclass
class Env:
    """What every command gets: the state root and the backend opened on first use."""

    root: Path
    _backend: Backend | None = field(default=None, repr=False)

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = open_local(self.root)
        return self._backend


pass_env = click.make_pass_decorator(Env)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--root",
    envvar="SLURMCTL_HOME",
    default=".slurmctl",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="State root of the embedded backend (env SLURMCTL_HOME).",
)
@click.option(
    "--log-level",
    envvar="SLURMCTL_LOG_LEVEL",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Log level of workers and finalize (env SLURMCTL_LOG_LEVEL).",
)
@click.version_option(package_name="slurmctl")
@click.pass_context
def cli(ctx: click.Context, root: Path, log_level: str) -> None:
    """Run embarrassingly parallel batch jobs on Slurm or on this machine."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = Env(root=root.absolute())


def main() -> None:
    from slurmctl.cli import control, inspect, retry, slurm, submit  # noqa: F401 - registers commands

    try:
        cli.main(standalone_mode=False, prog_name="slurmctl")
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_USER_ERROR)
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except IntegrityError as e:
        click.echo(f"integrity error: {e}", err=True)
        sys.exit(1)
    except SlurmctlError as e:
        click.echo(f"slurmctl: {e}", err=True)
        sys.exit(1)
