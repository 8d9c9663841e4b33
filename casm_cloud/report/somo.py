"""The SoMo.ml report page: maps per layer, Hovmöller diagrams, the CV table, stations.

:func:`write_somo_report` draws, beside ``index.html``: per layer the map of
the time-mean soil moisture and of its structural uncertainty (the seeds'
standard deviation), a Hovmöller diagram of zonal means per layer, and the
tables of the cross validation (per fold and layer), of the product at the
station cells and, on simulated data, of the scores against the truth.
Figures use :mod:`casm_cloud.report.figures`' helpers; the page is assembled
like the CASM report's (drawn in a fresh folder, then moved in place).
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.report import figures as fg
from casm_cloud.report.page import _page, _table_html

__all__ = ["write_somo_report", "SOMO_LAYERS"]

SOMO_LAYERS = ("sm_l1", "sm_l2", "sm_l3")
_DEPTHS = {"sm_l1": "0–10 cm", "sm_l2": "10–30 cm", "sm_l3": "30–50 cm"}


def _aggregates(product: xr.Dataset, layers) -> dict:
    lazy = {}
    for n in layers:
        lazy[f"{n}_mean"] = product[n].mean("time")
        lazy[f"{n}_zonal"] = product[n].mean("x")
        unc = f"structural_uncertainty_{n[-2:]}"
        if unc in product.data_vars:
            lazy[f"{n}_unc"] = product[unc].mean("time")
    keys = list(lazy)
    return dict(zip(keys, dask.compute(*[lazy[k] for k in keys]), strict=True))


def _maps(work: Path, product: xr.Dataset, agg: Mapping, layers) -> str:
    plt = fg._plt()
    fig, axes = plt.subplots(2, len(layers), figsize=(4.2 * len(layers), 7), squeeze=False)
    for i, n in enumerate(layers):
        fg._map(axes[0, i], fig, product, np.asarray(agg[f"{n}_mean"]),
                f"mean {n} ({_DEPTHS.get(n, '')})", "YlGnBu", "m³ m⁻³")
        if f"{n}_unc" in agg:
            fg._map(axes[1, i], fig, product, np.asarray(agg[f"{n}_unc"]),
                    f"structural uncertainty {n}", "magma_r", "m³ m⁻³")
        else:
            axes[1, i].set_axis_off()
    fig.tight_layout()
    return fg._save(fig, work, "somo_maps.png")


def _hovmoller(work: Path, product: xr.Dataset, agg: Mapping, layers) -> str:
    plt = fg._plt()
    times = pd.DatetimeIndex(product["time"].values)
    _, lat, _, yl = fg._lonlat(product)
    fig, axes = plt.subplots(len(layers), 1, figsize=(11, 2.6 * len(layers)), squeeze=False)
    for i, n in enumerate(layers):
        ax = axes[i, 0]
        mesh = ax.pcolormesh(times, lat, np.asarray(agg[f"{n}_zonal"]).T, shading="nearest",
                             cmap="YlGnBu")
        fig.colorbar(mesh, ax=ax, label="m³ m⁻³")
        ax.set(title=f"Hovmöller diagram of zonal means, {n} ({_DEPTHS.get(n, '')})",
               ylabel=yl)
    fig.tight_layout()
    return fg._save(fig, work, "somo_hovmoller.png")


def _station_map(work: Path, product: xr.Dataset, agg: Mapping, stations: pd.DataFrame) -> str:
    plt = fg._plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    fg._map(ax, fig, product, np.asarray(agg["sm_l1_mean"]), "station cells, R of sm_l1",
            "Greys", "mean sm_l1 (m³ m⁻³)")
    lon, lat, _, _ = fg._lonlat(product)
    s = stations[stations["layer"] == "sm_l1"]
    sc = ax.scatter(lon[s["cell_x"].values], lat[s["cell_y"].values], c=s["R"], cmap="viridis",
                    vmin=0, vmax=1, edgecolor="k", s=40)
    fig.colorbar(sc, ax=ax, label="R (product vs rescaled ISMN)")
    return fg._save(fig, work, "somo_stations.png")


def _write(out: Path, csv: Mapping[str, pd.DataFrame | None], product, title) -> Path:
    layers = [n for n in SOMO_LAYERS if n in product.data_vars]
    agg = _aggregates(product, layers)
    sections = []
    figs = [("Maps per layer", _maps(out, product, agg, layers)),
            ("Hovmöller", _hovmoller(out, product, agg, layers))]
    stations = csv.get("stations")
    if stations is not None and "R" in stations and len(stations):
        figs.append(("Station validation", _station_map(out, product, agg, stations)))
    times = pd.DatetimeIndex(product["time"].values)
    sections.append(f"<h2>Product</h2><p>{len(layers)} layers, {times[0]:%Y-%m-%d} to "
                    f"{times[-1]:%Y-%m-%d}, {product.sizes['y']} × {product.sizes['x']} "
                    "cells; the mean of the final seeds, with their standard deviation as "
                    "structural uncertainty.</p>")
    notes = {
        "cv": ("Cross validation", "Spatially blocked folds: every fold's models never saw "
               "its cells. Median over the fold's held-out station cells (training period); "
               "'mean' averages the folds. Anomaly R: anomalies of each series on its own "
               "(value − mean of a 35-day window with ≥ 10 values)."),
        "truth": ("Scores against the simulated truth", "Median over the cells no fold "
                  "trained on (no station), over the product period."),
        "stations": ("Station validation", "The product at the station cells against the "
                     "rescaled ISMN targets over the product period (the final models "
                     "trained on these cells: not an independent score)."),
    }
    for key, (head, note) in notes.items():
        df = csv.get(key)
        if df is None:
            continue
        name = f"somo_{key}.csv"
        df.to_csv(out / name, index=False)
        sections.append(f"<h2>{html.escape(head)}</h2><p class='note'>{html.escape(note)}</p>"
                        + _table_html(df, name))
    for head, name in figs:
        sections.append(f"<h2>{html.escape(head)}</h2><img src='{html.escape(name)}' "
                        f"alt='{html.escape(head)}'>")
    (out / "index.html").write_text(_page(title, sections), encoding="utf-8")
    return out / "index.html"


def write_somo_report(out_dir: str | os.PathLike, *, product: xr.Dataset,
                      cv: pd.DataFrame | None = None, stations: pd.DataFrame | None = None,
                      truth: pd.DataFrame | None = None, title: str = "casm_cloud SoMo.ml",
                      storage_options: Mapping | None = None) -> Path | str:
    """Write the SoMo.ml page (``index.html``, figures, CSV tables) into ``out_dir``.

    Parameters
    ----------
    out_dir : str or path-like
        Local folder or fsspec URL (drawn locally, then uploaded).
    product : xarray.Dataset
        ``sm_l1..3`` (time, y, x) and ``structural_uncertainty_l1..3``.
    cv, stations, truth : pandas.DataFrame, optional
        The validate stage's tables (CV per fold and layer, per-cell scores at
        the station cells with ``cell_y``/``cell_x``, scores against the truth).

    Returns
    -------
    pathlib.Path or str
        Where ``index.html`` is.
    """
    csv = {"cv": cv, "stations": stations, "truth": truth}
    url = str(out_dir)
    remote = "://" in url and not url.startswith("file://")
    with tempfile.TemporaryDirectory(prefix="casm-somo-report-") as tmp:
        work = Path(tmp) / "report"
        work.mkdir()
        _write(work, csv, product, title)
        if remote:
            from casm_cloud.storage import join, url_to_fs

            fs, path = url_to_fs(url, storage_options)
            fs.put(str(work).rstrip("/") + "/", path, recursive=True)
            return join(url, "index.html")
        out = Path(url.removeprefix("file://"))
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.parent / f".{out.name}.new"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(work, staged)
        shutil.rmtree(out, ignore_errors=True)
        staged.rename(out)
        return out / "index.html"
