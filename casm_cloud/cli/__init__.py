"""``casm-cloud`` command line: parse, then call the stages and the runner.

Each subcommand is a pair (``add_<name>(subparsers)`` registering its parser,
and a handler set with ``set_defaults(func=...)``).  Handlers import their
stage lazily so ``casm-cloud --help`` stays fast.  This module holds the
command registry, :func:`main` (exit codes, SIGTERM, logging); the commands
live by kind: :mod:`casm_cloud.cli.recipe` (``demo``, ``run``, ``update``,
printing :mod:`casm_cloud.cli.summary`), :mod:`casm_cloud.cli.stages` (the
stage commands) and :mod:`casm_cloud.somo.cli` (``somo …``).  A user error
(:class:`casm_cloud.errors.UserError`: bad recipe, catalog, store, input
file) prints one ``casm-cloud: error: …`` line and exits with 2; anything
else is a bug and keeps its traceback (exit 1).  The stage commands
(``seasonal``, ``predict``, ``validate``, ``export-casm``) call the same
library functions as the recipe's stages.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator

from casm_cloud.cli.recipe import add_demo, add_run, add_update
from casm_cloud.cli.stages import (
    add_export,
    add_predict,
    add_seasonal,
    add_simulate,
    add_validate,
)

log = logging.getLogger("casm_cloud")


def _add_somo(sub) -> None:
    from casm_cloud.somo.cli import add_commands

    add_commands(sub)


# Registry of subcommands, in the order `--help` lists them.
_COMMANDS = [
    add_demo,
    add_run,
    add_update,
    add_export,
    add_simulate,
    add_seasonal,
    add_predict,
    add_validate,
    _add_somo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="casm-cloud",
        description="Build and update machine-learning soil-moisture records (CASM, SoMo.ml).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so the same clean-up runs."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM (what Kubernetes sends a job's container before
    SIGKILL) interrupts it as Ctrl-C does: the cluster is shut down (local or gateway), the
    stage that was running writes no marker.  A second SIGTERM during that clean-up is
    ignored, so the clean-up finishes.  Only in the main thread (where signals arrive)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    quiet = {name: logging.getLogger(name) for name in ("distributed", "asyncio")}
    levels = {name: logger.level for name, logger in quiet.items()}

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # What the stopped work logs while the cluster goes down (distributed's closed comms,
        # an interrupted gather's never-retrieved future) says only that it was stopped.
        for logger in quiet.values():
            logger.setLevel(logging.CRITICAL)
        raise _Terminated()

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
        for name, logger in quiet.items():
            logger.setLevel(levels[name])


def main(argv: list[str] | None = None) -> int:
    """Run one ``casm-cloud`` command; returns its exit code.

    Exit codes: 0 done; 1 a bug (its traceback is printed); 2 a user error (one
    ``casm-cloud: error: …`` line); 130 interrupted by Ctrl-C (SIGINT) and 143
    stopped by SIGTERM (128 + the signal's number, the shell's convention; a
    Kubernetes job gets SIGTERM before SIGKILL), each with one
    ``casm-cloud: interrupted …`` line, after the cluster the command started
    (local or gateway) was shut down, and with no marker for the stage that was
    running: the same command continues the run.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _logging(args.verbose)
    from casm_cloud.errors import UserError

    try:
        with _sigterm_interrupts():
            rc = args.func(args)
    except UserError as err:
        # One line, also for messages that quote a multi-line parser error.
        one = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"casm-cloud: error: {one}", file=sys.stderr)
        log.debug("traceback", exc_info=True)
        return 2
    except _Terminated:
        print("casm-cloud: interrupted (SIGTERM): the stage that was running is not marked "
              "finished; run the same command again to continue", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("casm-cloud: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def _logging(verbose: int) -> None:
    """WARNING by default (dask's and distributed's too, workers included); -v INFO, -vv DEBUG."""
    import dask

    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name = logging.getLevelName(level).lower()
    # distributed configures its own loggers from dask.config when it is imported, and
    # LocalCluster workers inherit this config: set it before any cluster starts.
    dask.config.set({"logging": {"distributed": name, "distributed.client": name,
                                 "distributed.scheduler": name, "distributed.nanny": name,
                                 "distributed.worker": name, "distributed.http": name}})
    for logger in ("distributed", "bokeh", "tornado"):
        logging.getLogger(logger).setLevel(max(level, logging.WARNING) if logger != "distributed"
                                           else level)
