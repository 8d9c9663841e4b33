"""The report's figures: one function per figure, each drawing small aggregates.

:func:`aggregates` asks dask for every small aggregate the figures need in
one pass over the product (time means, zonal and spatial means, the share of
each network); each figure function then draws from those NumPy arrays and
returns the name of the PNG it saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr

UNCERTAINTIES = ("structural_uncertainty", "data_uncertainty")


# --------------------------------------------------------------------------- helpers
def _plt():
    """pyplot, on the Agg backend unless the user (a notebook's inline backend) chose one."""
    import os
    import sys

    import matplotlib

    if "MPLBACKEND" not in os.environ and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return name


def _lonlat(product: xr.Dataset) -> tuple[np.ndarray, np.ndarray, str, str]:
    if "lon" in product.coords and "lat" in product.coords:
        return product["lon"].values, product["lat"].values, "longitude (°E)", "latitude (°N)"
    return product["x"].values, product["y"].values, "x (m)", "y (m)"


def _map(ax, fig, product, field, title, cmap, label, vmin=None, vmax=None):
    lon, lat, xl, yl = _lonlat(product)
    mesh = ax.pcolormesh(lon, lat, np.asarray(field), shading="nearest", cmap=cmap, vmin=vmin,
                         vmax=vmax)
    fig.colorbar(mesh, ax=ax, label=label, shrink=0.85)
    ax.set(title=title, xlabel=xl, ylabel=yl)


def _mark_changes(ax, changes: Mapping[str, str]) -> None:
    for i, (label, date) in enumerate(sorted(changes.items(), key=lambda kv: pd.Timestamp(kv[1]))):
        ax.axvline(pd.Timestamp(date), color="k", lw=1.0, ls="--")
        ax.annotate(label, (pd.Timestamp(date), 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -10 - 11 * (i % 3)), textcoords="offset points", fontsize=7,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                          "alpha": 0.8})


def source_flags(product: xr.Dataset) -> dict[int, str]:
    """``{code: name}`` of the product's ``source`` flags (empty without them)."""
    src = product["source"] if "source" in product.data_vars else None
    if src is None or "flag_values" not in src.attrs:
        return {}
    values = np.atleast_1d(src.attrs["flag_values"])
    meanings = str(src.attrs.get("flag_meanings", "")).split()
    return {int(v): (meanings[i] if i < len(meanings) else str(v)) for i, v in enumerate(values)}


def aggregates(product: xr.Dataset, sm: xr.DataArray, flags: Mapping[int, str]) -> dict:
    """Every small aggregate the figures and the summary draw, in one ``dask.compute``."""
    space = [d for d in sm.dims if d != "time"]
    lazy = {
        "mean": sm.mean("time"),
        "std": sm.std("time"),
        "valid": sm.notnull().mean("time"),
        "zonal": sm.mean("x") if "x" in sm.dims else sm.mean(space[-1]),
        "global": sm.mean(space),
    }
    for name in UNCERTAINTIES:
        if name in product.data_vars:
            lazy[name] = product[name].mean("time")
    for code in flags:
        lazy[f"source_{code}"] = (product["source"] == code).mean(space)
    keys = list(lazy)
    return dict(zip(keys, dask.compute(*[lazy[k] for k in keys]), strict=True))


# --------------------------------------------------------------------------- figures
def maps_figure(work: Path, product: xr.Dataset, agg: Mapping) -> str:
    """Maps of the mean soil moisture and its coefficient of variation."""
    plt = _plt()
    mean = np.asarray(agg["mean"])
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.asarray(agg["std"]) / mean
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _map(axes[0], fig, product, mean, "mean soil moisture", "YlGnBu", "m³ m⁻³")
    _map(axes[1], fig, product, cv, "coefficient of variation", "magma_r", "std / mean")
    fig.tight_layout()
    return _save(fig, work, "maps_mean_cv.png")


def hovmoller_figure(work: Path, product: xr.Dataset, agg: Mapping, times: pd.DatetimeIndex,
                     changes: Mapping[str, str], variable: str) -> str:
    """Hovmöller diagram of the zonal (per-row) means, sensor changes marked."""
    plt = _plt()
    zonal = np.asarray(agg["zonal"])  # (time, y)
    fig, ax = plt.subplots(figsize=(11, 3.8))
    _, lat, _, yl = _lonlat(product)
    mesh = ax.pcolormesh(times, lat, zonal.T, shading="nearest", cmap="YlGnBu")
    fig.colorbar(mesh, ax=ax, label=f"zonal mean {variable} (m³ m⁻³)")
    ax.set(title="Hovmöller diagram of zonal (per-row) means", ylabel=yl)
    _mark_changes(ax, changes)
    return _save(fig, work, "hovmoller.png")


def global_mean_figure(work: Path, sm: xr.DataArray, agg: Mapping, times: pd.DatetimeIndex,
                       changes: Mapping[str, str], variable: str,
                       truth: xr.DataArray | None) -> str:
    """The spatial-mean series; with ``truth``, the truth's and the bias below."""
    from casm_cloud.report.scores import truth_on_product_times

    plt = _plt()
    truth_global = None
    if truth is not None:
        space = [d for d in sm.dims if d != "time"]
        t_on = truth_on_product_times(truth, sm)
        t_on, sm_al = xr.align(t_on, sm, join="inner")
        both = t_on.notnull() & sm_al.notnull()
        truth_global, prod_global = dask.compute(t_on.where(both).mean(space),
                                                 sm_al.where(both).mean(space))
    fig, axes = plt.subplots(2 if truth_global is not None else 1, 1, figsize=(11, 5.5 if
                             truth_global is not None else 3), sharex=True, squeeze=False)
    ax = axes[0, 0]
    ax.plot(times, np.asarray(agg["global"]), lw=1, label=f"product {variable}")
    if truth_global is not None:
        ax.plot(truth_global["time"].values, np.asarray(truth_global), lw=1, label="truth")
        bias = np.asarray(prod_global) - np.asarray(truth_global)
        axes[1, 0].plot(truth_global["time"].values, bias, lw=1, color="C3")
        axes[1, 0].axhline(0, color="grey", lw=0.6)
        axes[1, 0].set(ylabel="bias (m³ m⁻³)", title="global mean of product − truth")
        _mark_changes(axes[1, 0], changes)
    ax.set(ylabel="m³ m⁻³", title="spatial mean soil moisture")
    ax.legend(fontsize=8, loc="lower left")
    _mark_changes(ax, changes)
    fig.tight_layout()
    return _save(fig, work, "global_mean.png")


def source_share_figure(work: Path, agg: Mapping, times: pd.DatetimeIndex,
                        flags: Mapping[int, str], changes: Mapping[str, str]) -> str:
    """Share of the cells each network (``source``) made, over time."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 2.8))
    shares = np.stack([np.asarray(agg[f"source_{c}"]) for c in flags])
    ax.stackplot(times, shares, labels=list(flags.values()))
    ax.set(ylim=(0, 1), ylabel="share of cells", title="network that made each value")
    ax.legend(fontsize=7, loc="upper left", ncol=len(flags))
    _mark_changes(ax, changes)
    return _save(fig, work, "source_share.png")


def uncertainty_figure(work: Path, product: xr.Dataset, agg: Mapping,
                       names: list[str]) -> str:
    """Maps of the time-mean structural and data uncertainty (those present)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, k in zip(axes[0], names, strict=True):
        _map(ax, fig, product, np.asarray(agg[k]), f"mean {k.replace('_', ' ')}", "OrRd",
             "m³ m⁻³")
    fig.tight_layout()
    return _save(fig, work, "uncertainty_maps.png")


def validation_figures(work: Path, validation: pd.DataFrame,
                       validation_pairs: Mapping[str, xr.Dataset] | None) -> list[str]:
    """Box plots by network, the station map of R and one scatter per matched-pair set.

    Returns the ``<img>`` tags, in page order.
    """
    from casm_cloud.validation import figures as vfig

    tags = []
    metrics = [m for m in ("R", "ubRMSE", "bias", "anomaly_R") if m in validation]
    if metrics and "network" in validation:
        vfig.boxplot_by_network(validation, metrics, path=work / "validation_boxplot.png")
        tags.append('<img src="validation_boxplot.png" alt="box plots">')
    if {"lat", "lon", "R"} <= set(validation.columns):
        vfig.station_map(validation, "R", path=work / "validation_map_R.png")
        tags.append('<img src="validation_map_R.png" alt="station map">')
    for i, (name, pairs) in enumerate((validation_pairs or {}).items()):
        vfig.scatter(pairs, title=name, path=work / f"validation_scatter_{i}.png")
        tags.append(f'<img src="validation_scatter_{i}.png" alt="scatter {i}">')
    return tags
