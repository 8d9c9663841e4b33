"""The stage commands: ``simulate``, ``seasonal``, ``predict``, ``validate``, ``export-casm``.

Each calls the same library function as the recipe's stage of that name
(docs/architecture.md, "The runner"); its handler imports it lazily so
``casm-cloud --help`` stays fast.  ``casm_cloud.cli`` lists them in its
command registry.
"""

from __future__ import annotations

__all__ = ["add_export", "add_predict", "add_seasonal", "add_simulate", "add_validate"]


def add_simulate(sub) -> None:
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


def add_seasonal(sub) -> None:
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


def add_predict(sub) -> None:
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


def add_export(sub) -> None:
    p = sub.add_parser("export-casm", help="write the published CASM layout (netCDF per year)")
    p.add_argument("product", help="product Zarr store (path or URL)")
    p.add_argument("--out", required=True, help="output folder (path or URL)")

    def run(a):
        from casm_cloud.merge import export_casm

        for path in export_casm(a.product, a.out):
            print(path)

    p.set_defaults(func=run)


def add_validate(sub) -> None:
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

