"""Validation of products against ISMN stations: open, score, write table, figures, summary.

:func:`run_validation` is the one validation run: ``casm-cloud validate``
and the recipe's ``validate`` stage both call it (``docs/science.md``,
"Validate"; ``docs/architecture.md``, "The CASM recipe").  Products are named by URLs (local paths,
``gs://…``, ``memory://…``) with ``storage_options``; the output folder is a
URL too, written through fsspec.  Everything is computed and written into a
local scratch folder first and copied to the output only once every file
exists, so a failed validation leaves no output folder and no partial files.

This is orchestration (it computes and writes); the stages it calls return
lazy objects or small tables.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import xarray as xr
from fsspec.utils import get_protocol

from casm_cloud.errors import InputError, UserError
from casm_cloud.validation.evaluate import aggregate_metrics, matched_pairs, score_pairs
from casm_cloud.validation.exceptions import MissingInputError, MissingKeyError, ValidationError
from casm_cloud.validation.stations import read_ismn, select_stations, selection_report

__all__ = ["open_product", "keep_where", "run_validation", "product_name"]

_CELL_FILE = re.compile(r"^\d{4}\.nc$")
_TABLE_COLUMNS = ["product", "network", "station_name", "lat", "lon", "n", "R", "RMSE",
                  "ubRMSE", "bias", "rel_bias", "NRMSE", "NRMSD", "anomaly_R", "R2"]
_LOCAL_PROTOCOLS = ("file", "local")


def _local_path(url: str | Path) -> str | None:
    """The local file-system path of ``url`` (a path or ``file://``), or None for a remote URL."""
    url = str(url)
    if get_protocol(url) not in _LOCAL_PROTOCOLS:
        return None
    return url.split("://", 1)[1] if "://" in url else url


def product_name(url: str | Path) -> str:
    """The default name of a product in the table: the last part of its URL."""
    return str(url).rstrip("/").rsplit("/", 1)[-1]


def open_product(path: str | Path, variable: str, *, storage_options: Mapping | None = None,
                 extra: Sequence[str] = ()) -> xr.Dataset:
    """Open a product for validation by its layout, lazily.

    Parameters
    ----------
    path : str or Path
        A local path or fsspec URL.  Locally: a Zarr store (``*.zarr`` or a
        folder with ``zarr.json``/``.zgroup``), a netCDF/HDF5 file, or a
        folder of TU Wien time-series cell files (``NNNN.nc``).  A remote
        URL (``gs://…``, ``memory://…``) must be a Zarr store.
    variable : str
        The variable that will be scored (only it and ``extra`` are read
        from cell files).
    storage_options : mapping, optional
        fsspec options for URLs.
    extra : sequence of str
        Further variables needed (e.g. quality flags).

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    MissingInputError
        If nothing is at ``path`` (a ``FileNotFoundError``).
    ValidationError
        If ``path`` is not a layout above (a folder that is neither a Zarr
        store nor cell files, a file that is not netCDF, a remote URL that
        is not a Zarr store).
    """
    from casm_cloud import storage
    from casm_cloud.sources.tuw_ts import open_tuw_ts

    url = str(path)
    so = dict(storage_options or {})
    local = _local_path(url)
    if local is None:
        if not storage.exists(url, so):
            raise MissingInputError(f"product {url} does not exist")
        if not storage.store_state(url, so)["exists"]:
            raise ValidationError(f"product {url} is not a Zarr store (no zarr.json or .zgroup); "
                                  "a product at a remote URL must be a Zarr store")
        return storage.open_zarr(url, so)
    p = Path(local)
    if not p.exists():
        raise MissingInputError(f"product {url} does not exist")
    if url.rstrip("/").endswith(".zarr") or (p / "zarr.json").exists() \
            or (p / ".zgroup").exists():
        if not storage.store_state(local)["exists"]:
            raise ValidationError(f"product {url} is not a Zarr store (no zarr.json or .zgroup)")
        return storage.open_zarr(local)
    if p.is_dir():
        if any(_CELL_FILE.match(f.name) for f in p.iterdir()):
            return open_tuw_ts(local, variables=[variable, *extra])
        raise ValidationError(f"product folder {url} is neither a Zarr store nor a folder of "
                              "TU Wien time-series cell files (NNNN.nc)")
    try:
        return xr.open_dataset(p, chunks={})
    except (ValueError, OSError) as err:
        raise ValidationError(f"product {url}: cannot be read as netCDF/HDF5 ({err})") from err


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
    MissingKeyError
        If a flag variable is not in the product (a ``KeyError``).
    """
    keep = None
    for flag, allowed in rules.items():
        if flag not in product:
            raise MissingKeyError(f"--where: flag variable {flag!r} is not in the product "
                                  f"(has {sorted(map(str, product.data_vars))})")
        ok = product[flag].isin(list(allowed))
        keep = ok if keep is None else keep & ok
    if keep is None:
        return product
    return product.assign({variable: product[variable].where(keep)})


_FETCHED: dict[str, str] = {}


def _local_stations(stations_path: str | Path, storage_options: Mapping | None = None) -> str:
    """A local path of an ISMN download: as given, or fetched once per process from a URL.

    The ``ismn`` package reads local folders and zips only, so a download on an
    object store (``gs://…/ismn.zip``, as the monthly job has it) is copied to a
    scratch folder first (removed when the process exits).
    """
    local = _local_path(stations_path)
    if local is not None:
        return local
    url = str(stations_path)
    if url not in _FETCHED:
        import atexit
        import shutil

        from casm_cloud import storage

        fs, path = storage.url_to_fs(url, storage_options)
        if not fs.exists(path):
            raise MissingInputError(f"stations {url}: no ISMN folder or zip there")
        tmp = tempfile.mkdtemp(prefix="casm-ismn-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        target = os.path.join(tmp, path.rstrip("/").rsplit("/", 1)[-1])
        fs.get(path, target, recursive=fs.isdir(path))
        _FETCHED[url] = target
    return _FETCHED[url]


def _check_output(out: str, so: Mapping) -> None:
    from casm_cloud import storage

    fs, root = storage.url_to_fs(out, so)
    if fs.exists(root) and not fs.isdir(root):
        raise InputError(f"validation output {out} exists and is not a folder")


def run_validation(products: Mapping[str, str | Path] | str | Path, stations_path: str | Path,
                   out: str | Path, *, variables: Sequence[str] = ("sm",),
                   depth: tuple[float, float] = (0.0, 0.05), good_fraction: float = 0.9,
                   min_obs: int = 100, n_days: int = 3, anchor: str = "2002-01-01",
                   max_distance: float = 30_000.0, min_pairs: int = 10, figures: bool = True,
                   where: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
                   storage_options: Mapping | None = None) -> pd.DataFrame:
    """Validate products against an ISMN download and write the results.

    Writes into the folder ``out``: ``metrics.csv`` (one row per station and
    product), ``metrics_by_network.csv``, ``metrics_by_climate.csv`` (when
    the download has climate classes), ``stations_removed.csv``, the figures
    (``figures=True``) and ``summary.md``.  A product whose stations all
    fail is reported in the summary and skipped; if every product fails the
    error is raised.  The files are made in a local scratch folder and
    copied to ``out`` at the end: a failed validation writes nothing (an
    existing ``out`` keeps its files; the new ones replace those of the same
    name).

    Parameters
    ----------
    products : mapping or str
        Product name -> local path or fsspec URL (see :func:`open_product`);
        a single URL is named by :func:`product_name`.
    stations_path : str
        ISMN download (folder or zip) on the local file system.
    out : str or Path
        Output folder: a local path or fsspec URL (created at the end).
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
    storage_options : mapping, optional
        fsspec options for the product URLs and ``out``.

    Returns
    -------
    pandas.DataFrame
        The metrics table (also in ``metrics.csv``): ``product``,
        ``station``, ``network``, ``station_name``, ``instrument``, depths,
        ``lat``, ``lon`` (and climate / land cover when known),
        ``distance_km``, ``n``, ``R``, ``RMSE``, ``ubRMSE``, ``bias``,
        ``rel_bias``, ``NRMSE``, ``NRMSD``, ``anomaly_R``, ``R2``.

    Raises
    ------
    ValidationError
        If ``variables`` does not match the products, or no product could
        be validated (the message names the stations and each product with
        its reason).
    StationSelectionError, MissingInputError
        If the ISMN download does not exist or no station passes the rules
        (the message names the download).
    MissingKeyError
        If ``where`` names a product that is not in ``products``.
    InputError
        If ``stations_path`` is not on the local file system, or ``out`` is
        a file.
    """
    if isinstance(products, str | Path):
        products = {product_name(products): str(products)}
    products = {str(k): str(v) for k, v in products.items()}
    names = list(products)
    if not names:
        raise ValidationError("run_validation: no product given")
    unknown = sorted(set(where or {}) - set(names))
    if unknown:
        raise MissingKeyError(f"quality rules for unknown products {unknown} (products: {names})")
    variables = list(variables)
    if len(variables) == 1:
        variables = variables * len(names)
    if len(variables) != len(names):
        raise ValidationError(f"{len(variables)} variables for {len(names)} products: give one "
                              "--variable for all, or one per product")
    so = dict(storage_options or {})
    out = str(out)
    _check_output(out, so)
    stations = select_stations(read_ismn(_local_stations(stations_path, storage_options), depth=tuple(depth)),
                               good_fraction=good_fraction, min_obs=min_obs, n_days=n_days,
                               anchor=str(anchor))
    tables, pairs, failures, removed = [], {}, {}, []
    for name, var in zip(names, variables, strict=True):
        try:
            rules = (where or {}).get(name, {})
            product = keep_where(open_product(products[name], var, storage_options=so,
                                              extra=list(rules)), var, rules)
            paired, matches = matched_pairs(product, stations, variable=var,
                                            max_distance=max_distance)
            table = score_pairs(paired, matches, name=name, min_pairs=min_pairs)
        except (UserError, ValueError, KeyError, FileNotFoundError) as err:
            failures[name] = str(err.args[0] if type(err) is KeyError else err)
            continue
        tables.append(table)
        pairs[name] = paired
        removed += [(name, *line.split(": ", 1)) for line in table.attrs.get("removed", [])]
    if not tables:
        raise ValidationError(
            f"no product could be validated against the ISMN stations in {stations_path}: "
            + "; ".join(f"{k} ({products[k]}): {v}" for k, v in failures.items()))
    table = pd.concat(tables, ignore_index=True)
    with tempfile.TemporaryDirectory(prefix="casm-validate-") as tmp:
        _write_results(Path(tmp), table, pairs, stations, failures, removed, products,
                       stations_path, min_pairs, figures)
        _publish(Path(tmp), out, so)
    return table


def _write_results(work: Path, table, pairs, stations, failures, removed, products,
                   stations_path, min_pairs: int, figures: bool) -> None:
    """Every output file into the local folder ``work``."""
    table.to_csv(work / "metrics.csv", index=False, float_format="%.6g")
    by_net = aggregate_metrics(table, "network")
    by_net.to_csv(work / "metrics_by_network.csv", float_format="%.6g")
    by_clim = None
    if "climate_KG" in table and (table["climate_KG"].astype(str) != "").any():
        by_clim = aggregate_metrics(table, "climate_KG")
        by_clim.to_csv(work / "metrics_by_climate.csv", float_format="%.6g")
    sel = selection_report(stations).assign(product="(all)")
    coll = pd.DataFrame(removed, columns=["product", "station", "reason"])
    pd.concat([sel, coll], ignore_index=True)[["product", "station", "reason"]].to_csv(
        work / "stations_removed.csv", index=False)
    if figures:
        from casm_cloud.validation.figures import write_figures

        write_figures(table, pairs, work)
    _write_summary(work / "summary.md", table, by_net, by_clim, stations, failures, coll,
                   products, stations_path, min_pairs)


def _publish(work: Path, out: str, so: Mapping) -> None:
    """Copy the files of ``work`` into the folder ``out`` (any fsspec URL).

    On a failure while copying, what was copied is removed again (and
    ``out`` itself when it did not exist before).
    """
    from casm_cloud import storage

    fs, root = storage.url_to_fs(out, so)
    root = root.rstrip("/") or "/"
    existed = fs.exists(root)
    copied: list[str] = []
    try:
        fs.makedirs(root, exist_ok=True)
        for f in sorted(p for p in work.rglob("*") if p.is_file()):
            target = f"{root.rstrip('/')}/{f.relative_to(work).as_posix()}"
            fs.put_file(str(f), target)
            copied.append(target)
    except BaseException:
        with contextlib.suppress(Exception):
            if existed:
                for target in copied:
                    fs.rm_file(target)
            else:
                fs.rm(root, recursive=True)
        raise


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
        "NRMSE = RMSE / mean of the station series and rel_bias = bias / that mean "
        "(SoMo.ml's definitions), NRMSD = RMSE / joint range (pytesmo's nrmsd).", "",
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
