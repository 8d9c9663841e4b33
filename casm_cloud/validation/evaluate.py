"""Score a product against selected ISMN stations; aggregate the table.

:func:`validate_product` collocates the product with the stations
(:mod:`casm_cloud.validation.collocate`), averages the product into the same
anchored n-day bins as the stations (:func:`casm_cloud.aggregate.nday_mean`),
and computes every metric of :data:`casm_cloud.validation.metrics.METRICS`
for all stations in one vectorised call.  :func:`matched_pairs` exposes the
paired series it scores, so a test (or a user) can recompute any number with
pytesmo.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.aggregate import nday_mean
from casm_cloud.validation.collocate import CollocationError, collocate
from casm_cloud.validation.exceptions import MissingKeyError, ValidationError
from casm_cloud.validation.metrics import METRICS, pair_metrics

__all__ = ["validate_product", "matched_pairs", "score_pairs", "aggregate_metrics",
           "METRIC_COLUMNS"]

#: metric columns of the table, in order
METRIC_COLUMNS = list(METRICS)

_STATION_COLUMNS = ("network", "station_name", "instrument", "depth_from", "depth_to", "lat",
                    "lon", "climate_KG", "lc_2010")


def _product_array(product: xr.Dataset | xr.DataArray, variable: str) -> xr.DataArray:
    if isinstance(product, xr.Dataset):
        if variable not in product.data_vars:
            raise MissingKeyError(f"product has no variable {variable!r} "
                           f"(has {sorted(map(str, product.data_vars))}); choose one with "
                           "variable= (CLI: --variable)")
        da = product[variable]
        da.attrs = {**product.attrs, **da.attrs}
        return da
    if not isinstance(product, xr.DataArray):
        raise TypeError(f"product must be an xarray Dataset or DataArray, got "
                        f"{type(product).__name__}")
    return product


def matched_pairs(product: xr.Dataset | xr.DataArray, stations: xr.Dataset, *,
                  variable: str = "sm", max_distance: float = 30_000.0,
                  min_count: int = 1) -> tuple[xr.Dataset, pd.DataFrame]:
    """Product and station n-day means on one ``(station, time)`` axis.

    Parameters
    ----------
    product : xarray.Dataset or DataArray
        Gridded (EASE2 window or lat/lon) or time series per location, with
        a ``time`` dimension.
    stations : xarray.Dataset
        Output of :func:`casm_cloud.validation.stations.select_stations`
        (its ``n_days`` and ``anchor`` attributes set the bins).
    variable : str
        Product variable to score (when ``product`` is a Dataset).
    max_distance : float
        Largest distance (m) to a time-series location.
    min_count : int
        Fewest product values in a bin.

    Returns
    -------
    pairs : xarray.Dataset
        Variables ``product`` and ``reference`` ``(station, time)`` (bin
        starts), NaN where either is missing, only matched stations, with
        the station coordinates; computed (small).
    matches : pandas.DataFrame
        The collocation table for every input station (``matched``,
        ``reason``, ``distance_km`` …), indexed by station id.

    Raises
    ------
    ValidationError
        If the product variable has no ``time`` dimension, or ``stations``
        is not from ``select_stations``.
    MissingKeyError
        If ``variable`` is not in the product (a ``KeyError``).
    CollocationError
        If no station lies inside the product, or its layout is not recognised.
    """
    da = _product_array(product, variable)
    if "time" not in da.dims:
        raise ValidationError(f"product variable {variable!r} has no 'time' dimension "
                         f"(dims: {da.dims}); validation needs time series")
    svar = stations.attrs.get("ismn_variable")
    if svar is None or svar not in stations or "n_days" not in stations.attrs:
        raise ValidationError("stations: expected the output of select_stations "
                         "(attributes 'ismn_variable', 'n_days', 'anchor')")
    n_days, anchor = int(stations.attrs["n_days"]), stations.attrs["anchor"]
    series, table = collocate(da, stations["lat"].values, stations["lon"].values,
                              max_distance=max_distance)
    table.index = pd.Index(stations.station.values, name="station")
    if not table["matched"].any():
        raise CollocationError(
            "no station lies inside the product: "
            + "; ".join(f"{s}: {r}" for s, r in table["reason"].items())
        )
    keep = np.flatnonzero(table["matched"].to_numpy())
    series = series.isel(station=keep).astype(np.float32).sortby("time")
    series = series.assign_coords(station=stations.station.values[keep])
    binned = nday_mean(series.to_dataset(name="product"), n=n_days, anchor=anchor,
                       min_count=min_count)["product"].compute()
    st = stations[svar].isel(station=keep)
    prod, ref = xr.align(binned, st, join="inner")
    both = prod.notnull() & ref.notnull()
    pairs = xr.Dataset({"product": prod.where(both), "reference": ref.where(both)})
    pairs.attrs = {"n_days": n_days, "anchor": str(anchor), "variable": variable}
    return pairs, table


def validate_product(product: xr.Dataset | xr.DataArray, stations: xr.Dataset, *,
                     variable: str = "sm", name: str | None = None,
                     max_distance: float = 30_000.0, min_pairs: int = 10,
                     period: tuple[str, str] | None = None) -> pd.DataFrame:
    """Per-station metrics of a product against selected ISMN stations.

    Parameters
    ----------
    product : xarray.Dataset or DataArray
        The product, gridded or time series per location, with ``time``.
    stations : xarray.Dataset
        Output of :func:`casm_cloud.validation.stations.select_stations`.
    variable : str
        Product variable (when ``product`` is a Dataset).
    name : str, optional
        Product name for the ``product`` column (default: ``variable``).
    max_distance : float
        Largest distance (m) to a time-series location.
    min_pairs : int
        Stations with fewer paired n-day means get NaN metrics (and are
        kept in the table, with ``n`` showing why).
    period : (start, end), optional
        Score only pairs in this period.

    Returns
    -------
    pandas.DataFrame
        One row per matched station: ``product``, ``station`` (id),
        ``network``, ``station_name``, ``instrument``, ``depth_from``,
        ``depth_to``, ``lat``, ``lon``, ``climate_KG``, ``lc_2010`` (when
        known), ``distance_km``, ``n`` and the metric columns ``R``,
        ``RMSE``, ``ubRMSE``, ``bias``, ``rel_bias``, ``NRMSE``, ``NRMSD``, ``anomaly_R``, ``R2``
        (product minus/against station).  ``attrs["removed"]`` lists the
        stations the collocation dropped and why.

    Raises
    ------
    ValidationError
        If the product has no ``time`` dimension; if no station has
        ``min_pairs`` pairs (message lists each station's count).
    MissingKeyError
        If ``variable`` is not in the product (a ``KeyError``).
    CollocationError
        If no station lies inside the product.
    """
    pairs, matches = matched_pairs(product, stations, variable=variable,
                                   max_distance=max_distance)
    return score_pairs(pairs, matches, name=name or variable, min_pairs=min_pairs,
                       period=period)


def score_pairs(pairs: xr.Dataset, matches: pd.DataFrame, *, name: str = "product",
                min_pairs: int = 10, period: tuple[str, str] | None = None) -> pd.DataFrame:
    """The per-station table of :func:`validate_product` from matched pairs.

    Parameters
    ----------
    pairs, matches
        Output of :func:`matched_pairs`.
    name : str
        Value of the ``product`` column.
    min_pairs : int
        Stations with fewer pairs get NaN metrics.
    period : (start, end), optional
        Score only pairs in this period.

    Returns
    -------
    pandas.DataFrame
        As :func:`validate_product`.

    Raises
    ------
    ValidationError
        If no station has ``min_pairs`` pairs.
    """
    table = matches
    if period is not None:
        pairs = pairs.sel(time=slice(*period))
    scores = pair_metrics(pairs["product"], pairs["reference"]).compute()
    n = scores["n"].values
    if not (n >= min_pairs).any():
        raise ValidationError(
            f"no station has >= {min_pairs} paired {pairs.attrs['n_days']}-day means with the "
            "product (rule: min_pairs): "
            + ", ".join(f"{s}: {int(k)}" for s, k in zip(pairs.station.values, n, strict=True))
        )
    enough = scores["n"] >= min_pairs
    out = pd.DataFrame({"product": name, "station": pairs.station.values})
    for col in _STATION_COLUMNS:
        if col in pairs.coords:
            out[col] = pairs[col].values
    out["distance_km"] = table.loc[pairs.station.values, "distance_km"].to_numpy()
    out["n"] = n.astype(int)
    for col in METRICS:
        out[col] = scores[col].where(enough).values
    out.attrs["removed"] = [f"{s}: {r}" for s, r in table["reason"].items() if r]
    return out


def aggregate_metrics(table: pd.DataFrame, by: Literal["network", "climate_KG"] | str = "network",
                      *, metrics: Sequence[str] = tuple(METRIC_COLUMNS),
                      stat: Literal["median", "mean"] = "median") -> pd.DataFrame:
    """Medians (or means) of the metrics per group, with station counts.

    Parameters
    ----------
    table : pandas.DataFrame
        Output of :func:`validate_product` (one or several products
        concatenated).
    by : str
        Grouping column: ``network``, ``climate_KG`` or any other column.
    metrics : sequence of str
        Metric columns to summarise.
    stat : {"median", "mean"}
        Summary statistic (NaN metrics are skipped).

    Returns
    -------
    pandas.DataFrame
        Index ``(product, by)``; columns ``n_stations`` (rows with a valid
        R), ``n_pairs`` (sum of ``n``) and one per metric.

    Raises
    ------
    MissingKeyError
        If ``by`` or a metric is not a column of ``table`` (a ``KeyError``).
    """
    missing = [c for c in (by, *metrics) if c not in table.columns]
    if missing:
        raise MissingKeyError(f"aggregate_metrics: columns {missing} not in the table "
                       f"(have {list(table.columns)})")
    keys = ["product", by] if "product" in table.columns else [by]
    grouped = table.groupby(keys, dropna=False)
    out = grouped[list(metrics)].agg(stat)
    out.insert(0, "n_pairs", grouped["n"].sum())
    out.insert(0, "n_stations", grouped["R"].count() if "R" in table else grouped.size())
    return out
