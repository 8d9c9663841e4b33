"""SoMo.ml's validation scores, as the paper evaluates it (the validate stage's tables).

* :func:`cv_cells`: the CV folds' models at their held-out station cells over the
  training period, per fold, layer and cell (the CV table,
  :func:`casm_cloud.somo.cv.cv_scores`, is their medians);
* :func:`station_scores`: the product at the station cells over its period;
* :func:`gridded_scores`: the product against a gridded reference (ERA5's own
  layers over every cell; the simulator's truth at the cells no fold trained on),
  per cell and the medians per layer;
* :func:`reference_scores` / :func:`ranked`: O & Orth (2021, Figs. 6-7) score
  SoMo.ml and other gridded products (ERA5, GLEAM, ESA CCI) at the same stations
  and days and rank them by the median over the stations; any number of
  products on the recipe's window, per cell and layer;
* :func:`collocation`: the triple collocation errors of the product, ERA5 and the
  stations (:func:`casm_cloud.validation.tcol.triple_collocation`).

A product gives the layers it has (``sm_l1..3``); one with a single ``sm``
(a CASM product, ESA CCI) is a surface product and is scored as layer 1.
See docs/science.md, "Validate".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.somo.cv import SCORES, cell_scores

__all__ = ["scores_table", "cv_cells", "station_scores", "gridded_scores", "at_cells",
           "reference_scores", "ranked", "collocation"]

_DROP = ("y", "x", "lat", "lon", "crs")


def scores_table(pred: xr.DataArray, obs: xr.DataArray, min_obs: int, **cols) -> pd.DataFrame:
    """:func:`~casm_cloud.somo.cv.cell_scores` of ``(cell, time)`` series as a table, NaN
    below ``min_obs`` paired days, with constant columns ``cols`` in front."""
    df = cell_scores(pred, obs).compute().to_dataframe().reset_index()
    df.loc[df["n"] < min_obs, list(SCORES)] = np.nan
    for k, v in cols.items():
        df.insert(0, k, v)
    return df


def cv_cells(fold_prediction: Callable[[str, int], xr.DataArray], targets: xr.Dataset,
             folds: np.ndarray, layers: Sequence[str], n_folds: int, period,
             *, min_obs: int) -> pd.DataFrame:
    """Each fold's model at its held-out station cells over ``period`` (first, last day).

    ``fold_prediction(layer, fold)`` gives the fold model's ``(cell, time)`` series at
    every target cell (the train stage's ``cells.zarr``); ``folds`` the fold of each cell.
    """
    t0, t1 = (str(d) for d in period)
    rows = []
    for layer in layers:
        for f in range(n_folds):
            held = np.flatnonzero((folds == f) & (targets[f"n_stations_{layer}"].values > 0))
            pred = fold_prediction(layer, f).isel(cell=held).sel(time=slice(t0, t1))
            obs = targets[layer].isel(cell=held).sel(time=slice(t0, t1))
            rows.append(scores_table(pred, obs, min_obs, fold=f, layer=layer))
    return pd.concat(rows, ignore_index=True)


def station_scores(product: xr.Dataset, targets: xr.Dataset, layers: Sequence[str], *,
                   min_obs: int) -> pd.DataFrame:
    """The product at every target cell over its own days, per layer, with ``cell_y``,
    ``cell_x`` (the final models trained on these cells: not an independent score)."""
    times = product["time"].values
    rows = []
    for layer in layers:
        pred = at_cells(product, targets, layer, times)
        obs = targets[layer].reindex(time=times)  # targets are not updated
        df = scores_table(pred, obs, min_obs, layer=layer)
        df["cell_y"], df["cell_x"] = targets["cell_y"].values, targets["cell_x"].values
        rows.append(df)
    return pd.concat(rows, ignore_index=True)


def gridded_scores(product: xr.Dataset, ref: xr.Dataset, cells: np.ndarray,
                   layers: Sequence[str], *, min_obs: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The product against a gridded ``ref`` at ``cells`` (a boolean mask of the window)
    over the product's days: per cell, and the medians per layer with ``n_cells``."""
    ys, xs = np.nonzero(cells)
    yy, xx = xr.DataArray(ys, dims="cell"), xr.DataArray(xs, dims="cell")
    rows = []
    for layer in layers:
        pred = product[layer].isel(y=yy, x=xx)
        obs = ref[layer].reindex(time=pred["time"]).isel(y=yy, x=xx)
        rows.append(scores_table(
            pred.drop_vars(list(_DROP), errors="ignore").transpose("cell", "time"),
            obs.drop_vars(list(_DROP), errors="ignore").transpose("cell", "time"),
            min_obs, layer=layer))
    per_cell = pd.concat(rows, ignore_index=True)
    summary = per_cell.groupby("layer")[list(SCORES)].median().reset_index()
    summary.insert(1, "n_cells", per_cell.groupby("layer").size().values)
    return per_cell, summary


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
            df = scores_table(pred.isel(cell=np.flatnonzero(has)), obs, min_obs,
                              layer=layer, product=name)
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
