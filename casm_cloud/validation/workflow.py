"""The ``casm-cloud validate`` workflow: open, score, write table, figures, summary.

This is orchestration (it computes and writes); the stages it calls return
lazy objects or small tables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import xarray as xr

from casm_cloud.validation.evaluate import aggregate_metrics, matched_pairs, score_pairs
from casm_cloud.validation.stations import read_ismn, select_stations, selection_report

__all__ = ["open_product", "keep_where", "run_validation"]

_CELL_FILE = re.compile(r"^\d{4}\.nc$")
_TABLE_COLUMNS = ["product", "network", "station_name", "lat", "lon", "n", "R", "RMSE",
                  "ubRMSE", "bias", "NRMSE", "anomaly_R", "R2"]


def open_product(path: str, variable: str, *, storage_options: Mapping | None = None,
                 extra: Sequence[str] = ()) -> xr.Dataset:
    """Open a product for validation by its layout on disk, lazily.

    Parameters
    ----------
    path : str
        A Zarr store (``*.zarr`` or a folder with ``zarr.json``/``.zgroup``),
        a netCDF/HDF5 file, or a folder of TU Wien time-series cell files
        (``NNNN.nc``).
    variable : str
        The variable that will be scored (only it and ``extra`` are read
        from cell files).
    storage_options : mapping, optional
        fsspec options for Zarr URLs.
    extra : sequence of str
        Further variables needed (e.g. quality flags).

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    FileNotFoundError
        If nothing is at ``path``.
    ValueError
        If the folder is neither a Zarr store nor a folder of cell files.
    """
    from casm_cloud import storage
    from casm_cloud.sources.tuw_ts import open_tuw_ts

    p = Path(path)
    if "://" in path or path.rstrip("/").endswith(".zarr") or (p / "zarr.json").exists() \
            or (p / ".zgroup").exists():
        return storage.open_zarr(path, storage_options)
    if not p.exists():
        raise FileNotFoundError(f"product {path} does not exist")
    if p.is_dir():
        if any(_CELL_FILE.match(f.name) for f in p.iterdir()):
            return open_tuw_ts(path, variables=[variable, *extra])
        raise ValueError(f"product folder {path} is neither a Zarr store nor a folder of "
                         "TU Wien time-series cell files (NNNN.nc)")
    return xr.open_dataset(p, chunks={})


def keep_where(product: xr.Dataset, variable: str, rules: Mapping[str, Sequence[float]]
               ) -> xr.Dataset:
    """Mask ``variable`` wherever a flag variable is not one of the allowed values.

    Parameters
    ----------
    product : xarray.Dataset
        The product.
    variable : str
        Variable to mask.
    rules : mapping
        Flag variable -> allowed values, e.g. ``{"retrieval_qual_flag": [0, 8]}``
        (SMAP L3: retrieval recommended, with or without the freeze/thaw bit).

    Returns
    -------
    xarray.Dataset
        ``product`` with ``variable`` set to NaN where any rule fails (lazy).

    Raises
    ------
    KeyError
        If a flag variable is not in the product.
    """
    keep = None
    for flag, allowed in rules.items():
        if flag not in product:
            raise KeyError(f"--where: flag variable {flag!r} is not in the product "
                           f"(has {sorted(map(str, product.data_vars))})")
        ok = product[flag].isin(list(allowed))
        keep = ok if keep is None else keep & ok
    if keep is None:
        return product
    return product.assign({variable: product[variable].where(keep)})


def run_validation(products: Mapping[str, str], stations_path: str, out: str | Path, *,
                   variables: Sequence[str] = ("sm",), depth: tuple[float, float] = (0.0, 0.05),
                   good_fraction: float = 0.9, min_obs: int = 100, n_days: int = 3,
                   anchor: str = "2002-01-01", max_distance: float = 30_000.0,
                   min_pairs: int = 10, figures: bool = True,
                   where: Mapping[str, Mapping[str, Sequence[float]]] | None = None
                   ) -> pd.DataFrame:
    """Validate products against an ISMN download and write the results.

    Writes into ``out``: ``metrics.csv`` (one row per station and product),
    ``metrics_by_network.csv``, ``metrics_by_climate.csv`` (when the
    download has climate classes), ``stations_removed.csv``, the figures
    and ``summary.md``.  A product whose stations all fail is reported in
    the summary and skipped; if every product fails the error is raised.

    Parameters
    ----------
    products : mapping
        Product name -> path (see :func:`open_product`).
    stations_path : str
        ISMN download (folder or zip).
    out : str or Path
        Output folder (created).
    variables : sequence of str
        One variable for all products, or one per product (in order).
    depth, good_fraction, min_obs, n_days, anchor
        Station rules (see :func:`~casm_cloud.validation.stations.read_ismn`
        and :func:`~casm_cloud.validation.stations.select_stations`).
    max_distance : float
        Largest station-to-location distance (m) for time-series products.
    min_pairs : int
        Fewest pairs for a station's metrics.
    figures : bool
        Draw the figures.
    where : mapping, optional
        Product name -> quality rules for that product (see
        :func:`keep_where`), e.g. ``{"SMAP_L3": {"retrieval_qual_flag": [0, 8]}}``.

    Returns
    -------
    pandas.DataFrame
        The metrics table (also in ``metrics.csv``).

    Raises
    ------
    ValueError
        If ``variables`` does not match the products, or no product could
        be validated (the message gives each product's reason).
    KeyError
        If ``where`` names a product that is not in ``products``.
    """
    names = list(products)
    unknown = sorted(set(where or {}) - set(names))
    if unknown:
        raise KeyError(f"quality rules for unknown products {unknown} (products: {names})")
    if len(variables) == 1:
        variables = list(variables) * len(names)
    if len(variables) != len(names):
        raise ValueError(f"{len(variables)} variables for {len(names)} products: give one "
                         "--variable for all, or one per product")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stations = select_stations(read_ismn(stations_path, depth=depth), good_fraction=good_fraction,
                               min_obs=min_obs, n_days=n_days, anchor=anchor)
    tables, pairs, failures, removed = [], {}, {}, []
    for name, var in zip(names, variables, strict=True):
        try:
            rules = (where or {}).get(name, {})
            product = keep_where(open_product(products[name], var, extra=list(rules)), var, rules)
            paired, matches = matched_pairs(product, stations, variable=var,
                                            max_distance=max_distance)
            table = score_pairs(paired, matches, name=name, min_pairs=min_pairs)
        except (ValueError, KeyError, FileNotFoundError) as err:
            failures[name] = str(err.args[0] if isinstance(err, KeyError) else err)
            continue
        tables.append(table)
        pairs[name] = paired
        removed += [(name, *line.split(": ", 1)) for line in table.attrs.get("removed", [])]
    if not tables:
        raise ValueError("no product could be validated: "
                         + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out / "metrics.csv", index=False, float_format="%.6g")
    by_net = aggregate_metrics(table, "network")
    by_net.to_csv(out / "metrics_by_network.csv", float_format="%.6g")
    by_clim = None
    if "climate_KG" in table and (table["climate_KG"].astype(str) != "").any():
        by_clim = aggregate_metrics(table, "climate_KG")
        by_clim.to_csv(out / "metrics_by_climate.csv", float_format="%.6g")
    sel = selection_report(stations).assign(product="(all)")
    coll = pd.DataFrame(removed, columns=["product", "station", "reason"])
    pd.concat([sel, coll], ignore_index=True)[["product", "station", "reason"]].to_csv(
        out / "stations_removed.csv", index=False)
    if figures:
        from casm_cloud.validation.figures import write_figures

        write_figures(table, pairs, out)
    _write_summary(out / "summary.md", table, by_net, by_clim, stations, failures, coll,
                   products, stations_path, min_pairs)
    return table


def _md_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table (no tabulate dependency)."""
    df = df.reset_index() if not isinstance(df.index, pd.RangeIndex) else df
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
             for row in df.itertuples(index=False)]
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    return "\n".join([head, rule] + ["| " + " | ".join(r) + " |" for r in cells])


def _write_summary(path: Path, table, by_net, by_clim, stations, failures, coll, products,
                   stations_path, min_pairs: int) -> None:
    a = stations.attrs
    lines = [
        "# Validation against ISMN stations", "",
        f"Stations: `{stations_path}`; depth {a.get('depth_range')} m, flag 'G', "
        f"good fraction >= {a.get('good_fraction_min')}, >= {a.get('min_obs')} "
        f"{a.get('n_days')}-day means (anchor {a.get('anchor')}): "
        f"{stations.sizes['station']} station(s) kept.", "",
        "Products: " + ", ".join(f"{k} (`{v}`)" for k, v in products.items()), "",
        "Metrics: product minus/against station on paired n-day means; R Pearson, "
        "anomaly_R on ±17-day moving-window anomalies, R2 coefficient of determination, "
        "NRMSE normalised by the joint range (pytesmo definitions).", "",
        "## Per station", "", _md_table(table[[c for c in _TABLE_COLUMNS if c in table]]), "",
        "## Median per network", "", _md_table(by_net), "",
    ]
    if by_clim is not None:
        lines += ["## Median per climate class (Köppen-Geiger)", "", _md_table(by_clim), ""]
    removed = selection_report(stations)
    if len(removed) or len(coll):
        lines += ["## Stations removed", ""]
        lines += [f"* {r.station}: {r.reason}" for r in removed.itertuples()]
        lines += [f"* {r.station} ({r.product}): {r.reason}" for r in coll.itertuples()]
        lines.append("")
    unscored = table[table["R"].isna()] if "R" in table else table.iloc[:0]
    if len(unscored):
        lines += ["## Stations without metrics", ""]
        lines += [f"* {r.station_name} ({r.product}): {int(r.n)} valid pairs, fewer than "
                  f"{min_pairs}: no metrics"
                  for r in unscored.itertuples()] + [""]
    if failures:
        lines += ["## Products not validated", ""]
        lines += [f"* {k}: {v}" for k, v in failures.items()] + [""]
    path.write_text("\n".join(lines))
