"""SoMo.ml against reference datasets at the stations, as the paper evaluates it.

O & Orth (2021, Figs. 6-7) score SoMo.ml and other gridded products (ERA5, GLEAM,
ESA CCI) at the same stations and days and rank them by the median over the
stations.  :func:`reference_scores` does that for any number of products on the
recipe's window: each product's layers at the station cells against the
stations' targets (docs/science.md, "Validate"), per cell and layer;
:func:`ranked` gives the medians, best first.  :func:`collocation` adds the
triple collocation errors of the product, ERA5 and the stations
(:func:`casm_cloud.validation.tcol.triple_collocation`).

A product gives the layers it has (``sm_l1..3``); one with a single ``sm``
(a CASM product, ESA CCI) is a surface product and is scored as layer 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.somo.cv import SCORES, cell_scores

__all__ = ["at_cells", "reference_scores", "ranked", "collocation"]

_DROP = ("y", "x", "lat", "lon", "crs")


def at_cells(ds: xr.Dataset, targets: xr.Dataset, layer: str, times) -> xr.DataArray | None:
    """``ds``'s ``layer`` (or ``sm`` for layer 1) at the target cells, ``(cell, time)`` on
    ``times``; None when ``ds`` has no such layer."""
    name = layer if layer in ds.data_vars else ("sm" if layer == "sm_l1" and "sm" in ds else None)
    if name is None:
        return None
    cy = xr.DataArray(targets["cell_y"].values, dims="cell")
    cx = xr.DataArray(targets["cell_x"].values, dims="cell")
    da = ds[name].isel(y=cy, x=cx).drop_vars(list(_DROP), errors="ignore")
    return da.reindex(time=times).transpose("cell", "time").rename(layer)


def reference_scores(products: Mapping[str, xr.Dataset], targets: xr.Dataset,
                     layers: Sequence[str], times, *, min_obs: int) -> pd.DataFrame:
    """Scores of every product at the station cells, per product, layer and cell.

    Parameters
    ----------
    products : mapping of name -> Dataset
        Gridded products on the window (dims ``time, y, x``).
    targets : xarray.Dataset
        The targets stage's ``targets.zarr`` (``sm_l1..`` over ``(cell, time)``,
        ``cell_y``, ``cell_x``).
    layers : sequence of str
    times : array of datetime64
        The days scored (the product period).
    min_obs : int
        Fewest paired days of a cell's scores (fewer: NaN).

    Returns
    -------
    pandas.DataFrame
        ``product``, ``layer``, ``cell``, :data:`~casm_cloud.somo.cv.SCORES`, ``n``;
        only the cells that have a station of the layer.
    """
    rows = []
    for layer in layers:
        has = targets[f"n_stations_{layer}"].values > 0
        obs = targets[layer].reindex(time=times).isel(cell=np.flatnonzero(has))
        for name, ds in products.items():
            pred = at_cells(ds, targets, layer, times)
            if pred is None:
                continue
            sc = cell_scores(pred.isel(cell=np.flatnonzero(has)), obs).compute()
            df = sc.to_dataframe().reset_index()
            df.loc[df["n"] < min_obs, list(SCORES)] = np.nan
            df.insert(0, "layer", layer)
            df.insert(0, "product", name)
            rows.append(df[["product", "layer", "cell", *SCORES, "n"]])
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["product", "layer", "cell", *SCORES, "n"])


def ranked(per_cell: pd.DataFrame, by: str = "anomaly_R") -> pd.DataFrame:
    """Median over the cells per layer and product, best first by ``by`` (higher is better
    for the correlations, lower for NRMSE); ``rank`` 1 is the best."""
    med = per_cell.groupby(["layer", "product"])[list(SCORES)].median()
    med["n_cells"] = per_cell.dropna(subset=[by]).groupby(["layer", "product"]).size()
    med = med.reset_index()
    ascending = by == "NRMSE"
    med["rank"] = med.groupby("layer")[by].rank(ascending=ascending, method="min")
    return med.sort_values(["layer", "rank"]).reset_index(drop=True)


def collocation(product: xr.Dataset, era5: xr.Dataset, targets: xr.Dataset,
                layers: Sequence[str], times, *, min_obs: int,
                names: Sequence[str] = ("SoMo.ml", "ERA5", "ISMN")) -> pd.DataFrame:
    """Triple collocation of the product, ERA5 and the stations at the station cells.

    Returns
    -------
    pandas.DataFrame
        ``layer``, ``cell``, ``series`` (``names``), ``err_std`` (in the stations'
        units), ``snr`` (dB), ``beta``, ``n``; NaN below ``min_obs`` common days.
    """
    from casm_cloud.validation.tcol import triple_collocation

    rows = []
    for layer in layers:
        has = np.flatnonzero(targets[f"n_stations_{layer}"].values > 0)
        obs = targets[layer].reindex(time=times).isel(cell=has)
        x, y = (at_cells(d, targets, layer, times).isel(cell=has) for d in (product, era5))
        tc = triple_collocation(x, y, obs.drop_vars(list(_DROP), errors="ignore"),
                                ref=names[2], min_obs=min_obs, names=names).compute()
        df = tc[["err_std", "snr", "beta"]].to_dataframe().reset_index()
        df = df.merge(tc["n"].to_dataframe().reset_index(), on="cell")
        df.insert(0, "layer", layer)
        rows.append(df[["layer", "cell", "series", "err_std", "snr", "beta", "n"]])
    return pd.concat(rows, ignore_index=True)
