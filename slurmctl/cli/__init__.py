"""The `slurmctl` command line. Global options and their environment fallbacks live here, once.

A user's mistake (`UserError`) is printed as one line on stderr with exit code 2, never a
traceback.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from slurmctl import wiring
from slurmctl.backends import Backend
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.backends.spec import BackendSpec, Registry
from slurmctl.errors import IntegrityError, JobNotFound, SlurmctlError, UserError

# The exit codes of `submit`, `status`, `resume`, `retry` and `aggregate` (README's table).
EXIT_OK = 0
"""COMPLETED (failures within max_failure_share), or still in progress (`status`)."""
EXIT_FAILED = 1
"""FAILED, including items failed beyond max_failure_share."""
EXIT_USER_ERROR = 2
"""A user's mistake: bad definition, input or job id, a refused resubmission."""
EXIT_PAUSED = 3
"""PAUSED (the circuit breaker, `pause`), CANCELLED, or a local job nobody is running."""
EXIT_INTERRUPTED = 130
"""Ctrl-C."""


@dataclass
class Env:
    """What every command gets: the state root and the backend opened on first use.

    The backend is the job's: `--backend` if given, else the one the registry recorded for the
    command's JOB at submit, else the embedded backend under the state root.
    """

    root: Path
    override: BackendSpec | None = None
    job_id: str | None = None
    _backend: Backend | None = field(default=None, repr=False)

    @property
    def registry(self) -> Registry:
        return Registry(self.root)

    def spec(self) -> BackendSpec:
        if self.override is not None:
            return self.override
        found = self.registry.get(self.job_id) if self.job_id else None
        return found or BackendSpec("local", root=self.root)

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self.spec().open()
        return self._backend

    def use(self, spec: BackendSpec) -> Backend:
        """Submit: the definition names the backend (unless `--backend` does)."""
        self._backend = (self.override or spec).open()
        return self._backend


pass_env = click.make_pass_decorator(Env)


class JobCommand(click.Command):
    """Tells the Env which job the command is about, so it opens that job's backend."""

    def invoke(self, ctx: click.Context) -> object:
        env = ctx.find_object(Env)
        if env is not None:
            env.job_id = ctx.params.get("job_id")
            spec = env.spec()
            state_db = spec.root / "state.sqlite" if spec.root is not None else None
            if env.job_id and spec.kind == "local" and state_db and not state_db.exists():
                # no state root here: say so without creating one as a side effect
                raise JobNotFound(
                    f"no job {env.job_id!r} in this state root; `slurmctl list` shows the jobs"
                )
        return super().invoke(ctx)


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
@click.option(
    "--backend",
    "backend_url",
    envvar="SLURMCTL_BACKEND",
    default=None,
    help="Backend URL (local:///path or aws://BUCKET/PREFIX?table=T), overriding the "
    "job's (env SLURMCTL_BACKEND).",
)
@click.version_option(package_name="slurmctl")
@click.pass_context
def cli(ctx: click.Context, root: Path, log_level: str, backend_url: str | None) -> None:
    """Run embarrassingly parallel batch jobs on Slurm or on this machine."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for chatty in ("botocore", "boto3", "urllib3"):  # "Found credentials in ...": noise
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    override = BackendSpec.parse(backend_url) if backend_url else None
    wiring.install()  # the observers and the executors' status sections, before any command
    ctx.obj = _CURRENT.env = Env(root=root.absolute(), override=override)


class _Current:
    """The command's Env, for the messages of errors caught outside click's context."""

    env: Env | None = None


_CURRENT = _Current()


def _store_error(e: OSError | sqlite3.DatabaseError) -> str | None:
    """One line for a state root that is full or damaged; None when it is neither."""
    env = _CURRENT.env
    where = str(env.root) if env is not None else "the state root"
    full = (
        (isinstance(e, OSError) and e.errno == errno.ENOSPC)
        or "No space left on device" in str(e)  # pyarrow's IO errors carry no errno
        or (isinstance(e, sqlite3.OperationalError) and "disk is full" in str(e))
    )
    if full:
        job = env.job_id if env is not None and env.job_id else "JOB"
        return (
            f"slurmctl: no space left on device under {where} ({e}); free some space, then "
            f"`slurmctl resume {job}` carries on where it stopped"
        )
    if isinstance(e, sqlite3.DatabaseError):
        return (
            f"slurmctl: the state store {where} is unreadable ({e}): damaged or truncated; "
            "restore it from a copy, or use another --root"
        )
    return None


cli.command_class = JobCommand


def command_name(args: list[str]) -> str | None:
    """The command of a command line (the first argument that is no group option or its
    value: a valued option's value is the next argument unless written `--opt=value`), None
    when there is none."""
    valued = {
        name
        for p in cli.params
        if isinstance(p, click.Option) and not p.is_flag and not p.count
        for name in p.opts
    }
    rest = iter(args)
    for arg in rest:
        if arg in valued:
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
    return None


def main() -> None:
    if command_name(sys.argv[1:]) == "worker":  # every worker's start: its command only
        from slurmctl.cli import worker
    else:
        from slurmctl.cli import (  # noqa: F401
            aws,
            clean,
            control,
            inspect,
            observe,
            ratelimit,
            results,
            retry,
            slurm,
            submit,
            worker,
        )

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
        sys.exit(EXIT_FAILED)
    except ObjectNotFound as e:  # a KeyError: its str() is the quoted key alone
        click.echo(f"slurmctl: stored object {e.args[0] if e.args else '?'} is missing", err=True)
        sys.exit(EXIT_FAILED)
    except SlurmctlError as e:
        click.echo(f"slurmctl: {e}", err=True)
        sys.exit(EXIT_FAILED)
    except (OSError, sqlite3.DatabaseError) as e:
        line = _store_error(e)
        if line is None:
            raise
        logging.getLogger("slurmctl").debug("store error", exc_info=True)
        click.echo(line, err=True)
        sys.exit(EXIT_FAILED)
