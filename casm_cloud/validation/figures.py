"""Validation figures (matplotlib, Agg backend; nothing is shown).

Each function draws one figure from the outputs of
:func:`casm_cloud.validation.validate_product` /
:func:`casm_cloud.validation.matched_pairs`, saves it when ``path`` is given
and returns the :class:`matplotlib.figure.Figure` (closed after saving, so
loops over many products do not accumulate figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.validation.exceptions import MissingKeyError

__all__ = ["scatter", "boxplot_by_network", "time_series", "station_map", "write_figures"]


def _plt():
    """pyplot, on the Agg backend unless the user (a notebook's inline backend) chose one."""
    import os
    import sys

    import matplotlib

    if "MPLBACKEND" not in os.environ and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, path: str | Path | None):
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
        _plt().close(fig)
    return fig


def scatter(pairs: xr.Dataset, *, title: str = "", path: str | Path | None = None):
    """Product against station n-day means, all stations, coloured by network.

    Parameters
    ----------
    pairs : xarray.Dataset
        From :func:`~casm_cloud.validation.evaluate.matched_pairs`.
    title : str
        Figure title (e.g. the product name).
    path : str or Path, optional
        Where to save (PNG/SVG/PDF by suffix).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    networks = pairs["network"].values if "network" in pairs.coords else \
        np.array(["stations"] * pairs.sizes["station"])
    for net in sorted(set(networks)):
        sel = pairs.isel(station=np.flatnonzero(networks == net))
        x, y = sel["reference"].values.ravel(), sel["product"].values.ravel()
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=6, alpha=0.5, label=f"{net} ({ok.sum()} pairs)")
    lim = [0.0, float(np.nanmax([pairs["reference"].max(), pairs["product"].max(), 0.1])) * 1.05]
    ax.plot(lim, lim, color="k", lw=0.8, ls="--")
    ax.set(xlim=lim, ylim=lim, xlabel="station SM (m³ m⁻³)", ylabel="product SM (m³ m⁻³)",
           title=title or "product vs stations")
    ax.legend(fontsize=8, loc="upper left")
    return _finish(fig, path)


def boxplot_by_network(table: pd.DataFrame, metrics: Sequence[str] = ("R", "ubRMSE", "bias"),
                       *, path: str | Path | None = None):
    """Box plots of per-station metrics, one box per network and product.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`~casm_cloud.validation.evaluate.validate_product`
        (several products may be concatenated).
    metrics : sequence of str
        Metric columns, one panel each.
    path : str or Path, optional
        Where to save.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4), squeeze=False)
    groups = table.groupby(["product", "network"]) if "product" in table else \
        table.groupby(["network"])
    labels = ["\n".join(map(str, k if isinstance(k, tuple) else (k,))) for k in groups.groups]
    for ax, metric in zip(axes[0], metrics, strict=True):
        data = [g[metric].dropna().to_numpy() for _, g in groups]
        ax.boxplot(data, tick_labels=labels, showmeans=True)
        ax.set_title(metric)
        ax.tick_params(axis="x", labelsize=7)
        if metric in ("R", "anomaly_R", "R2"):
            ax.axhline(0, color="grey", lw=0.6)
    fig.tight_layout()
    return _finish(fig, path)


def time_series(pairs: xr.Dataset, stations: Sequence[str] | None = None, *,
                max_panels: int = 4, path: str | Path | None = None):
    """Product and station n-day means over time at chosen stations.

    Parameters
    ----------
    pairs : xarray.Dataset
        From :func:`~casm_cloud.validation.evaluate.matched_pairs`.
    stations : sequence of str, optional
        Station ids (default: the ``max_panels`` with the most pairs).
    max_panels : int
        Most panels when ``stations`` is not given.
    path : str or Path, optional
        Where to save.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    MissingKeyError
        If a requested station id is not in ``pairs`` (a ``KeyError``).
    """
    plt = _plt()
    if stations is None:
        n = pairs["product"].notnull().sum("time").to_series().sort_values(ascending=False)
        stations = list(n.index[n > 0][:max_panels]) or list(n.index[:1])
    missing = [s for s in stations if s not in pairs.station.values]
    if missing:
        raise MissingKeyError(f"stations {missing} not in the matched pairs "
                       f"(have {list(pairs.station.values)})")
    fig, axes = plt.subplots(len(stations), 1, figsize=(10, 2.4 * len(stations)),
                             squeeze=False, sharex=True)
    for ax, sid in zip(axes[:, 0], stations, strict=True):
        sel = pairs.sel(station=sid)
        t = sel["time"].values
        ax.plot(t, sel["reference"].values, ".", ms=2.5, label="station")
        ax.plot(t, sel["product"].values, ".", ms=2.5, label="product")
        ax.set_title(str(sid), fontsize=9)
        ax.set_ylabel("m³ m⁻³")
    axes[0, 0].legend(fontsize=8, loc="upper right", markerscale=3)
    fig.tight_layout()
    return _finish(fig, path)


def station_map(table: pd.DataFrame, metric: str = "R", *, path: str | Path | None = None):
    """Map of a metric at the station locations (lon/lat, no basemap).

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`~casm_cloud.validation.evaluate.validate_product` (one
        product).
    metric : str
        Column to colour by.
    path : str or Path, optional
        Where to save.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    vmin, vmax = (-1.0, 1.0) if metric in ("R", "anomaly_R") else (None, None)
    sc = ax.scatter(table["lon"], table["lat"], c=table[metric], cmap="RdYlBu", vmin=vmin,
                    vmax=vmax, s=60, edgecolor="k")
    for _, row in table.iterrows():
        ax.annotate(str(row.get("station_name", "")), (row["lon"], row["lat"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    fig.colorbar(sc, ax=ax, label=metric)
    ax.set(xlabel="longitude (°E)", ylabel="latitude (°N)", title=f"station {metric}")
    ax.set_aspect(1.0 / max(np.cos(np.deg2rad(float(table["lat"].mean()))), 0.1))
    return _finish(fig, path)


def write_figures(table: pd.DataFrame, pairs: dict[str, xr.Dataset], out: str | Path) -> list[Path]:
    """All validation figures into a folder.

    Parameters
    ----------
    table : pandas.DataFrame
        Concatenated per-station tables of all products.
    pairs : dict
        Product name -> matched pairs.
    out : str or Path
        Folder (created).

    Returns
    -------
    list of Path
        The files written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "boxplot_by_network.png"]
    boxplot_by_network(table, path=written[-1])
    for name, p in pairs.items():
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
        written.append(out / f"scatter_{safe}.png")
        scatter(p, title=name, path=written[-1])
        written.append(out / f"timeseries_{safe}.png")
        time_series(p, path=written[-1])
        sub = table[table["product"] == name] if "product" in table else table
        written.append(out / f"map_R_{safe}.png")
        station_map(sub, "R", path=written[-1])
    return written
