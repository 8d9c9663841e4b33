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


def _print_summary(ctx) -> None:
    r = ctx.recipe
    print("\ncasm-cloud summary")
    print(f"  product : {r.output('product')}")
    print(f"  export  : {r.output('export')}")
    print(f"  report  : {storage_join(r.output('report'), 'index.html')}")
    if ctx.dashboard:
        print(f"  dask dashboard (while running): {ctx.dashboard}")
    scores = ctx.summary.get("scores")
    if scores:
        print("  scores against the simulated truth (median over cells):")
        for k, v in scores.items():
            if isinstance(v, (int, float)):
                print(f"    {k:<28} {v:.3f}")
    if ctx.timings:
        print(f"  stages run: {', '.join(f'{k} {v:.0f}s' for k, v in ctx.timings.items())}")


def storage_join(*parts: str) -> str:
    from casm_cloud.storage import join

    return join(*parts)


def _add_recipe_commands(sub) -> None:
    from casm_cloud.pipeline import STAGE_NAMES

    def add_common(p):
        p.add_argument("--from", dest="start_from", choices=STAGE_NAMES,
                       help="re-run from this stage on")
        p.add_argument("--until-stage", dest="until_stage", choices=STAGE_NAMES,
                       help="stop after this stage")
        p.add_argument("--cluster", help="'local', 'gateway' or tcp://host:port "
                       "(overrides the recipe)")

    p = sub.add_parser("demo", help="simulate the demo region (if needed) and run the recipe")
    p.add_argument("--out", default="casm-demo", help="output folder (default ./casm-demo)")
    add_common(p)

    def run_demo(a):
        from casm_cloud.pipeline import run_demo

        _print_summary(run_demo(a.out, start_from=a.start_from, until=a.until_stage,
                                cluster=a.cluster))

    p.set_defaults(func=run_demo)

    p = sub.add_parser("run", help="run (or resume) a recipe")
    p.add_argument("recipe", help="recipe YAML file")
    add_common(p)

    def run_run(a):
        from casm_cloud.config import load_recipe
        from casm_cloud.pipeline import run_recipe

        recipe = load_recipe(a.recipe, **_cluster_override(a.cluster))
        _print_summary(run_recipe(recipe, start_from=a.start_from, until=a.until_stage))

    p.set_defaults(func=run_run)

    p = sub.add_parser("update", help="extend a finished run with new months of data")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--until", required=True, help="last day to include, YYYY-MM-DD")
    p.add_argument("--cluster", help="'local', 'gateway' or tcp://host:port")

    def run_update(a):
        from casm_cloud.config import load_recipe
        from casm_cloud.pipeline import update_recipe

        recipe = load_recipe(a.recipe, **_cluster_override(a.cluster))
        _print_summary(update_recipe(recipe, a.until))

    p.set_defaults(func=run_update)

    p = sub.add_parser("export-casm", help="write the published CASM layout (netCDF per year)")
    p.add_argument("product", help="product Zarr store (path or URL)")
    p.add_argument("--out", required=True, help="output folder (path or URL)")

    def run_export(a):
        from casm_cloud.pipeline import export_casm

        for path in export_casm(a.product, a.out):
            print(path)

    p.set_defaults(func=run_export)


def _cluster_override(kind: str | None) -> dict:
    return {"cluster": {"kind": kind}} if kind else {}


# Registry of subcommands, in the order `--help` lists them.
_COMMANDS = [
    _add_recipe_commands,
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
