"""``casm-cloud`` command line: parse, then call the stages and the runner.

Each subcommand is a pair (``_add_<name>(subparsers)`` registering its parser,
and a handler set with ``set_defaults(func=...)``).  Handlers import their
stage lazily so ``casm-cloud --help`` stays fast.  A user error
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
import shlex
import signal
import sys
import threading
from collections.abc import Iterator

log = logging.getLogger("casm_cloud")



def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="write simulated sources, stations and a catalog")
    p.add_argument("--out", required=True, help="output folder or fsspec URL")
    p.add_argument("--region", default="demo", help="named region (default: demo)")
    p.add_argument("--grid", default="M25", help="EASE2 grid (M36, M25, M09)")
    p.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    p.add_argument("--end", required=True, help="last day, YYYY-MM-DD")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stations", type=int, default=8, help="number of ISMN-like stations")
    p.add_argument("--era5-native", action="store_true",
                   help="write ERA5 on its native 0.25 deg lat/lon grid")
    p.add_argument("--amsre-ease1", action="store_true",
                   help="write AMSR-E on the EASE-Grid v1 25 km grid (NSIDC-0301)")
    p.add_argument("--layout", choices=("canonical", "provider"), default="canonical",
                   help="canonical Zarr stores (default), or the files the providers "
                        "distribute (SPL3SMP HDF5, CATDS L3TB, NSIDC-0301, CETB, ARCO-ERA5 "
                        "and CDS netCDF) with a catalog of the real data's adapters")
    p.add_argument("--era5-formats", default="arco,netcdf",
                   help="provider layout: comma-separated ERA5 layouts, of arco (Zarr v3, "
                        "one chunk per hour: the costliest) and netcdf (default: both)")
    p.add_argument("--keep-canonical", action="store_true",
                   help="provider layout: keep the canonical stores it was made from in "
                        "<out>/canonical/ with their own catalog")

    def run(a):
        from casm_cloud.simulate import write_simulation

        formats = [f.strip() for f in a.era5_formats.split(",") if f.strip()]
        path = write_simulation(a.out, region=a.region, grid=a.grid, start=a.start, end=a.end,
                                seed=a.seed, n_stations=a.stations, era5_native=a.era5_native,
                                amsre_ease1=a.amsre_ease1, layout=a.layout,
                                era5_formats=formats, keep_canonical=a.keep_canonical)
        print(f"catalog: {path}")

    p.set_defaults(func=run)


def _add_seasonal(sub) -> None:
    p = sub.add_parser("seasonal", help="fit the seasonal cycle of a Zarr store; write parameters")
    p.add_argument("input", metavar="INPUT_ZARR", help="input Zarr store (path or fsspec URL)")
    p.add_argument("--out", required=True, help="parameter Zarr store to write")
    p.add_argument("--vars", default=None,
                   help="comma-separated variables to fit (default: all with a time dim)")
    p.add_argument("--min-obs", type=int, default=40,
                   help="fewest valid values for a sine fit; fewer: the median (default: 40)")
    p.add_argument("--residuals", default=None, metavar="URL",
                   help="also write the residuals (value - cycle) to this Zarr store")

    def run(a):
        from casm_cloud import storage
        from casm_cloud.seasonal import METHODS, seasonal_params, write_seasonal

        ds = storage.open_zarr(a.input)
        names = [v.strip() for v in a.vars.split(",") if v.strip()] if a.vars else None
        params = seasonal_params(ds, names, min_obs=a.min_obs)
        out = write_seasonal(params, a.out, data=ds, residuals_url=a.residuals)
        counts = {name: int((out["method"] == code).sum()) for code, name in METHODS.items()}
        print(f"parameters: {a.out} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
        if a.residuals:
            print(f"residuals: {a.residuals}")

    p.set_defaults(func=run)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="ensemble prediction with uncertainty into a Zarr store "
                                       "(resumable; --append for new months)")
    p.add_argument("--inputs", required=True, help="Zarr URL of the canonical TB inputs")
    p.add_argument("--params", required=True, nargs="+",
                   help="Zarr URL(s) of seasonal parameters of the inputs and the target")
    p.add_argument("--ensemble", required=True, nargs="+", help="checkpoint directories")
    p.add_argument("--out", required=True, help="output Zarr URL")
    p.add_argument("--n-noise", type=int, default=10, help="noisy copies per member (10)")
    p.add_argument("--noise-scale", type=float, default=0.1,
                   help="noise std / residual std of each TB channel (0.1)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per forward pass")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="recompute finished chunks")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output made by another configuration")
    p.add_argument("--append", action="store_true",
                   help="grow the output's time axis to the inputs' (monthly update)")
    p.add_argument("--scheduler", default=None,
                   help="address of a running dask scheduler (default: this process)")

    def run(a):
        from casm_cloud import storage
        from casm_cloud.inference import predict_to_zarr

        params = {u: storage.open_zarr(u) for u in a.params}
        kw = dict(n_noise=a.n_noise, noise_scale=a.noise_scale, batch_size=a.batch_size,
                  device=a.device, precision=a.precision, seed=a.seed, resume=a.resume,
                  overwrite=a.overwrite, append=a.append)
        if a.scheduler:
            from distributed import Client

            with Client(a.scheduler) as client:
                s = predict_to_zarr(a.inputs, a.ensemble, params, a.out, client=client, **kw)
        else:
            s = predict_to_zarr(a.inputs, a.ensemble, params, a.out, **kw)
        print(f"{s.url}: {s.n_chunks} chunks, {s.computed} computed, {s.skipped} already "
              f"finished (config {s.predict_hash[:12]})")

    p.set_defaults(func=run)


def _print_summary(ctx) -> None:
    print("\ncasm-cloud summary")
    for name, url in ctx.outputs.items():
        if name == "recipe":
            continue
        print(f"  {name:<8}: {storage_join(url, 'index.html') if name == 'report' else url}")
    if ctx.dashboard:
        print(f"  dask dashboard (while running): {ctx.dashboard}")
    if ctx.summary.get("preset"):
        print(f"  preset  : {ctx.summary['preset']}")
    scores = ctx.summary.get("scores")
    if scores:
        print("  scores against the simulated truth (median over cells):")
        for k, v in scores.items():
            if isinstance(v, (int, float)):
                print(f"    {k:<28} {v:.3f}")
        for k, v in (scores.get("bias_steps") or {}).items():
            print(f"    bias step {k:<18} {v:+.4f}")
    for key, what, n in (("eras", "the simulated truth (median cell)", "n_pixels"),
                         ("station_eras", "the stations (median station)", "n_stations")):
        eras = (scores or {}).get(key) if key == "eras" else ctx.summary.get(key)
        if eras:
            print(f"  per era, against {what}:")
            print(f"    {'era':<18} {'from':<10}  {'to':<10}  {'R':>6} {'ubRMSE':>7} "
                  f"{'bias':>7} {n:>10}")
            for label, e in eras.items():
                print(f"    {label:<18} {e['start']:<10}  {e['end']:<10}  {e['R']:6.3f} "
                      f"{e['ubRMSE']:7.4f} {e['bias']:+7.4f} {e[n]:>10}")
    _print_validate_tables(ctx)
    top = ctx.summary.get("importance")
    if top:
        print("  permutation importance, the input whose permutation costs most (median NRMSE):")
        print("    " + ", ".join(f"{layer} {feature}" for layer, feature in top.items()))
    if ctx.timings:
        print(f"  stages run: {', '.join(f'{k} {v:.0f}s' for k, v in ctx.timings.items())}")


#: The SoMo.ml validate stage's tables the summary prints, in order, with what each holds.
_VALIDATE_TABLES = (
    ("cv", "cross validation at held-out station cells (median cell per fold; 'mean' over "
           "folds)"),
    ("era5", "the product against ERA5's own layers (median cell of the window)"),
    ("references", "the products at the stations, ranked by anomaly R (median cell)"),
    ("truth", "scores against the simulated truth at cells no fold trained on (median cell)"),
)


def _print_validate_tables(ctx) -> None:
    """Print the validate stage's ``cv.csv``, ``era5.csv`` and ``truth.csv`` as the run root
    holds them.

    Read from the stage's outputs, so a run that found validate up to date prints
    them too.  Printed only when they are current: the stage's marker is there and
    no stage before it finished later (a run stopped before validate after an
    upstream stage ran again leaves the old tables, which are then not printed).
    """
    import datetime as dt

    import pandas as pd

    from casm_cloud.recipes.runner import stage_state
    from casm_cloud.storage import exists, url_to_fs

    urls = {key: storage_join(ctx.run_root, "validate", f"{key}.csv") for key, _ in
            _VALIDATE_TABLES}
    found = {key: url for key, url in urls.items() if exists(url, ctx.so)}
    marker = stage_state(ctx.run_root, "validate", ctx.so) if found else None
    if not marker:
        return
    from casm_cloud.recipes import recipe_module

    names = [s.name for s in recipe_module("somo").STAGES]
    finished = dt.datetime.fromisoformat(marker["finished"])
    for name in names[:names.index("validate")]:
        st = stage_state(ctx.run_root, name, ctx.so) or {}
        if st.get("finished") and dt.datetime.fromisoformat(st["finished"]) > finished:
            print(f"  validate tables not shown: stage {name!r} ran after validate "
                  f"({st['finished'][:19]} > {marker['finished'][:19]}); run validate again")
            return
    for key, what in _VALIDATE_TABLES:
        if key not in found:
            continue
        fs, path = url_to_fs(found[key], ctx.so)
        with fs.open(path) as f:
            table = pd.read_csv(f, dtype={"fold": str})
        if len(table):
            print(f"  {what}:")
            print(f"    ({found[key]}, validate finished {marker['finished'][:19]})")
            print("    " + table.to_string(index=False, float_format=lambda v: f"{v:.3f}")
                  .replace("\n", "\n    "))


def storage_join(*parts: str) -> str:
    from casm_cloud.storage import join

    return join(*parts)


def _add_common(p) -> None:
    """Options of the commands that run a recipe's stages."""
    p.add_argument("--from", dest="start_from", metavar="STAGE",
                   help="re-run from this stage on")
    p.add_argument("--until-stage", dest="until_stage", metavar="STAGE",
                   help="stop after this stage")
    p.add_argument("--cluster", help="'local', 'gateway' or tcp://host:port "
                   "(overrides the recipe)")


def _add_demo(sub) -> None:
    from casm_cloud.recipes import RECIPES

    p = sub.add_parser("demo", help="simulate the demo region (if needed) and run the recipe")
    p.add_argument("--out", default=None, help="output folder (default ./<recipe>-demo)")
    p.add_argument("--recipe", default="casm", choices=sorted(RECIPES),
                   help="which recipe's demo (default: casm)")
    _add_common(p)

    def run(a):
        from casm_cloud.recipes import run_demo

        out = a.out or f"{a.recipe}-demo"
        ctx = run_demo(out, kind=a.recipe, start_from=a.start_from, until=a.until_stage,
                       cluster=a.cluster)
        _print_summary(ctx)
        again = ["casm-cloud", "run", ctx.outputs["recipe"]]
        print(f"  recipe  : {ctx.outputs['recipe']}; edit it and run it again with\n    "
              + shlex.join(again + (["--cluster", a.cluster] if a.cluster else [])))

    p.set_defaults(func=run)


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run (or resume) a recipe")
    p.add_argument("recipe", help="recipe YAML file")
    _add_common(p)

    def run(a):
        from casm_cloud.config import load_recipe
        from casm_cloud.recipes import run_recipe

        recipe = _with_cluster(load_recipe(a.recipe), a.cluster)
        _print_summary(run_recipe(recipe, start_from=a.start_from, until=a.until_stage))

    p.set_defaults(func=run)


def _add_update(sub) -> None:
    p = sub.add_parser("update", help="extend a finished run with new months of data")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--until", required=True, help="last day to include, YYYY-MM-DD")
    p.add_argument("--cluster", help="'local', 'gateway' or tcp://host:port")

    def run(a):
        from casm_cloud.config import load_recipe
        from casm_cloud.recipes import update_recipe

        recipe = _with_cluster(load_recipe(a.recipe), a.cluster)
        _print_summary(update_recipe(recipe, a.until))

    p.set_defaults(func=run)


def _add_export(sub) -> None:
    p = sub.add_parser("export-casm", help="write the published CASM layout (netCDF per year)")
    p.add_argument("product", help="product Zarr store (path or URL)")
    p.add_argument("--out", required=True, help="output folder (path or URL)")

    def run(a):
        from casm_cloud.merge import export_casm

        for path in export_casm(a.product, a.out):
            print(path)

    p.set_defaults(func=run)


def _with_cluster(recipe, kind: str | None):
    """The recipe with ``--cluster`` as its cluster kind; its other cluster keys stay."""
    if not kind:
        return recipe
    from casm_cloud.config import recipe_from_dict

    raw = recipe.model_dump(mode="json")
    raw["cluster"] = {**raw["cluster"], "kind": kind}
    return recipe_from_dict(raw)


def _add_validate(sub) -> None:
    p = sub.add_parser(
        "validate", help="validate products against ISMN in-situ stations",
        description="Score products against ISMN stations: writes metrics.csv, per-network and "
                    "per-climate medians, figures and summary.md, and prints the table.")
    p.add_argument("product", nargs="+",
                   help="product: Zarr store, netCDF file, or folder of TU Wien time-series "
                        "cell files; NAME=PATH names it in the table")
    p.add_argument("--stations", required=True, help="ISMN download (folder or .zip)")
    p.add_argument("--out", default="validation", help="output folder (default: validation)")
    p.add_argument("--variable", action="append",
                   help="product variable to score (default sm); once for all or once per product")
    p.add_argument("--depth", nargs=2, type=float, default=(0.0, 0.05), metavar=("FROM", "TO"),
                   help="sensor depth range in metres (default 0 0.05)")
    p.add_argument("--good-fraction", type=float, default=0.9)
    p.add_argument("--min-obs", type=int, default=100, help="fewest n-day means per station")
    p.add_argument("--n-days", type=int, default=3)
    p.add_argument("--anchor", default="2002-01-01")
    p.add_argument("--max-distance-km", type=float, default=30.0,
                   help="largest station-to-location distance for time-series products")
    p.add_argument("--min-pairs", type=int, default=10)
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--where", action="append", default=[], metavar="[NAME:]FLAG=V1,V2",
                   help="keep product values only where FLAG is one of the values, e.g. "
                        "SMAP_L3:retrieval_qual_flag=0,8 (without NAME: every product)")

    def run(a):
        from casm_cloud.validation.workflow import run_validation

        products = {}
        for item in a.product:
            name, sep, path = item.partition("=")
            if not sep:
                name, path = item.rstrip("/").rsplit("/", 1)[-1], item
            products[name] = path
        where: dict = {}
        for rule in a.where:
            target, flag_values = rule.rsplit(":", 1) if ":" in rule else ("", rule)
            flag, sep, values = flag_values.partition("=")
            if not sep or not values:
                from casm_cloud.errors import InputError

                raise InputError(f"--where {rule!r}: expected [NAME:]FLAG=V1,V2")
            for name in [target] if target else list(products):
                where.setdefault(name, {})[flag] = [float(v) for v in values.split(",")]
        table = run_validation(products, a.stations, a.out, variables=a.variable or ["sm"],
                               depth=tuple(a.depth), good_fraction=a.good_fraction,
                               min_obs=a.min_obs, n_days=a.n_days, anchor=a.anchor,
                               max_distance=a.max_distance_km * 1000.0,
                               min_pairs=a.min_pairs, figures=not a.no_figures, where=where)
        cols = ["product", "network", "station_name", "n", "R", "RMSE", "ubRMSE", "bias",
                "rel_bias", "NRMSE", "NRMSD", "anomaly_R", "R2"]
        print(table[[c for c in cols if c in table]].to_string(index=False, float_format="%.3f"))
        print(f"written: {a.out}/metrics.csv, summary.md and figures")

    p.set_defaults(func=run)


def _add_somo(sub) -> None:
    from casm_cloud.somo.cli import add_commands

    add_commands(sub)


# Registry of subcommands, in the order `--help` lists them.
_COMMANDS = [
    _add_demo,
    _add_run,
    _add_update,
    _add_export,
    _add_simulate,
    _add_seasonal,
    _add_predict,
    _add_validate,
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


if __name__ == "__main__":
    sys.exit(main())
