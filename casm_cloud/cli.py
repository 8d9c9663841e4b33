"""``casm-cloud`` command line: parse, then call the stages and the runner.

Each subcommand is a pair (``_add_<name>(subparsers)`` registering its parser,
and a handler set with ``set_defaults(func=...)``).  Handlers import their
stage lazily so ``casm-cloud --help`` stays fast.  Expected failures (bad
input, missing files) print one ``casm-cloud: error: …`` line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("casm_cloud")

# Errors that are the user's input, not a bug: one clear line, exit code 2.
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError,
                                                 NotADirectoryError, IsADirectoryError, KeyError)


def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="write simulated sources, stations and a catalog")
    p.add_argument("--out", required=True, help="output folder or fsspec URL")
    p.add_argument("--region", default="demo", help="named region (default: demo)")
    p.add_argument("--grid", default="M25", help="EASE2 grid (M36, M25, M09)")
    p.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    p.add_argument("--end", required=True, help="last day, YYYY-MM-DD")
    p.add_argument("--seed", type=int, default=0)

    def run(a):
        from casm_cloud.simulate import write_simulation

        path = write_simulation(a.out, region=a.region, grid=a.grid, start=a.start, end=a.end,
                                seed=a.seed)
        print(f"catalog: {path}")

    p.set_defaults(func=run)


# Registry of subcommands, in the order `--help` lists them.
_COMMANDS = [
    _add_simulate,
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rc = args.func(args)
    except _USER_ERRORS as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"casm-cloud: error: {msg}", file=sys.stderr)
        log.debug("traceback", exc_info=True)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
