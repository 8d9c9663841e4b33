"""The SoMo.ml report page: maps per layer, Hovmöller diagrams, the CV table, stations.

:func:`write_somo_report` draws, beside ``index.html``: per layer the map of
the time-mean soil moisture and of its structural uncertainty (the seeds'
standard deviation), a Hovmöller diagram of zonal means per layer, the
window-mean series with its structural uncertainty, the cross validation per
fold and layer, the station cells' R on a map and, given the targets, one
station cell's series against the product; and the tables of the cross
validation, of the product at the station cells, of the product against
ERA5's own layers and, on simulated data, of the scores against the truth.

One function per figure, as in :mod:`casm_cloud.report.figures` (whose
helpers they use): :func:`aggregates` asks dask for every small aggregate in
one pass over the product, each figure function draws from them (or from the
validate stage's tables) and returns the name of the PNG it saved in
``work``.  A notebook calls the same functions (``notebooks/03_somo_run.ipynb``).
The page is assembled like the CASM report's (drawn in a fresh folder, then
moved in place).
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.report import figures as fg
from casm_cloud.report.page import _page, _table_html

__all__ = ["write_somo_report", "SOMO_LAYERS", "layers_of", "aggregates", "maps_figure",
           "hovmoller_figure", "uncertainty_figure", "cv_figure", "station_map_figure",
           "station_series_figure", "station_cell", "references_figure"]

SOMO_LAYERS = ("sm_l1", "sm_l2", "sm_l3")
_DEPTHS = {"sm_l1": "0–10 cm", "sm_l2": "10–30 cm", "sm_l3": "30–50 cm"}


def _unc(layer: str) -> str:
    return f"structural_uncertainty_{layer[-2:]}"


def layers_of(product: xr.Dataset) -> list[str]:
    """The SoMo.ml layers (``sm_l1..3``) the product holds, in depth order."""
    return [n for n in SOMO_LAYERS if n in product.data_vars]


def aggregates(product: xr.Dataset, layers: Sequence[str] | None = None) -> dict:
    """Every small aggregate the figures draw, in one ``dask.compute``.

    Per layer ``n``: ``{n}_mean`` (time mean, y × x), ``{n}_zonal`` (mean over
    ``x``, time × y), ``{n}_series`` (window mean, time) and, with the
    structural uncertainty, ``{n}_unc`` (its time mean) and ``{n}_unc_series``
    (its window mean); NumPy-backed DataArrays.
    """
    layers = layers_of(product) if layers is None else list(layers)
    space = [d for d in product[layers[0]].dims if d != "time"]
    lazy = {}
    for n in layers:
        lazy[f"{n}_mean"] = product[n].mean("time")
        lazy[f"{n}_zonal"] = product[n].mean("x")
        lazy[f"{n}_series"] = product[n].mean(space)
        if _unc(n) in product.data_vars:
            lazy[f"{n}_unc"] = product[_unc(n)].mean("time")
            lazy[f"{n}_unc_series"] = product[_unc(n)].mean(space)
    keys = list(lazy)
    return dict(zip(keys, dask.compute(*[lazy[k] for k in keys]), strict=True))


def _layers(agg: Mapping, layers) -> list[str]:
    return [n for n in SOMO_LAYERS if f"{n}_mean" in agg] if layers is None else list(layers)


def maps_figure(work: Path, product: xr.Dataset, agg: Mapping,
                layers: Sequence[str] | None = None) -> str:
    """Per layer: the map of the time-mean soil moisture and of its structural uncertainty."""
    plt = fg._plt()
    layers = _layers(agg, layers)
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
    return fg._save(fig, Path(work), "somo_maps.png")


def hovmoller_figure(work: Path, product: xr.Dataset, agg: Mapping,
                     layers: Sequence[str] | None = None) -> str:
    """Per layer, the Hovmöller diagram of zonal (per-row) means."""
    plt = fg._plt()
    layers = _layers(agg, layers)
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
    return fg._save(fig, Path(work), "somo_hovmoller.png")


def uncertainty_figure(work: Path, product: xr.Dataset, agg: Mapping,
                       layers: Sequence[str] | None = None) -> str:
    """Per layer, the window-mean soil moisture ± its window-mean structural uncertainty."""
    plt = fg._plt()
    layers = _layers(agg, layers)
    times = pd.DatetimeIndex(product["time"].values)
    fig, axes = plt.subplots(len(layers), 1, figsize=(11, 2.3 * len(layers)), sharex=True,
                             squeeze=False)
    for i, n in enumerate(layers):
        ax = axes[i, 0]
        mean = np.asarray(agg[f"{n}_series"])
        ax.plot(times, mean, lw=1, color="C0", label=f"window mean {n}")
        if f"{n}_unc_series" in agg:
            unc = np.asarray(agg[f"{n}_unc_series"])
            ax.fill_between(times, mean - unc, mean + unc, color="C0", alpha=0.3, lw=0,
                            label="± structural uncertainty (std of the seeds)")
        ax.set(ylabel="m³ m⁻³", title=f"{n} ({_DEPTHS.get(n, '')})")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fg._save(fig, Path(work), "somo_uncertainty.png")


def cv_figure(work: Path, cv: pd.DataFrame) -> str:
    """The CV table drawn: per layer and score, each fold's median cell (dots), their mean (bar)."""
    from casm_cloud.somo.cv import SCORES

    plt = fg._plt()
    scores = [s for s in SCORES if s in cv]
    layers = sorted(cv["layer"].unique())
    fig, axes = plt.subplots(1, len(scores), figsize=(4.2 * len(scores), 3.4), squeeze=False)
    for ax, score in zip(axes[0], scores, strict=True):
        for i, layer in enumerate(layers):
            sub = cv[cv["layer"] == layer]
            folds = sub[sub["fold"].astype(str) != "mean"]
            mean = sub.loc[sub["fold"].astype(str) == "mean", score]
            if len(mean):
                ax.bar(i, float(mean.iloc[0]), color=f"C{i}", alpha=0.5)
            ax.plot(np.full(len(folds), i), folds[score].values, "o", color=f"C{i}", ms=4)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xticks(range(len(layers)), layers)
        ax.set(title=f"{score}: folds (dots), mean (bar)")
    fig.tight_layout()
    return fg._save(fig, Path(work), "somo_cv.png")


def importance_figure(work: Path, table: pd.DataFrame) -> str:
    """Permutation importance as the paper's Fig. 4: per layer, the median over folds of
    ΔNRMSE and ΔR per permuted feature (bars, sorted by ΔNRMSE), each fold a dot."""
    plt = fg._plt()
    t = table[table["feature"] != "baseline"]
    layers = sorted(t["layer"].unique())
    fig, axes = plt.subplots(len(layers), 2, figsize=(9, 2.6 * len(layers)), squeeze=False)
    for row, layer in zip(axes, layers, strict=True):
        sub = t[t["layer"] == layer]
        med = sub[sub["fold"].astype(str) == "median"].sort_values("dNRMSE", ascending=False)
        folds = sub[sub["fold"].astype(str) != "median"]
        for ax, score in zip(row, ("dNRMSE", "dR"), strict=True):
            y = np.arange(len(med))
            ax.barh(y, med[score].values, color="C0" if score == "dNRMSE" else "C1", alpha=0.6)
            for i, feat in enumerate(med["feature"]):
                ax.plot(folds.loc[folds["feature"] == feat, score].values,
                        np.full((folds["feature"] == feat).sum(), i), "k.", ms=3)
            ax.set_yticks(y, med["feature"].values)
            ax.invert_yaxis()
            ax.axvline(0, color="grey", lw=0.6)
            ax.set(title=f"{layer}: {'ΔNRMSE' if score == 'dNRMSE' else 'ΔR'} when permuted")
    fig.tight_layout()
    return fg._save(fig, Path(work), "importance.png")


def references_figure(work: Path, per_cell: pd.DataFrame,
                      scores: Sequence[str] = ("NRMSE", "anomaly_R")) -> str:
    """The paper's Figs. 6-7: per layer and score, a box of the station cells per product,
    the products ranked by their median (best on the left)."""
    plt = fg._plt()
    layers = sorted(per_cell["layer"].unique())
    fig, axes = plt.subplots(len(scores), len(layers), figsize=(3.6 * len(layers),
                                                                3.0 * len(scores)),
                             squeeze=False)
    colours = {n: f"C{i}" for i, n in enumerate(dict.fromkeys(per_cell["product"]))}
    for r, score in enumerate(scores):
        for c, layer in enumerate(layers):
            ax = axes[r][c]
            sub = per_cell[(per_cell["layer"] == layer)].dropna(subset=[score])
            med = sub.groupby("product")[score].median().sort_values(
                ascending=score == "NRMSE")
            data = [sub.loc[sub["product"] == n, score].values for n in med.index]
            if data:
                box = ax.boxplot(data, patch_artist=True, widths=0.6)
                for patch, name in zip(box["boxes"], med.index, strict=True):
                    patch.set_facecolor(colours[name])
                    patch.set_alpha(0.6)
                ax.set_xticks(range(1, len(med) + 1), med.index, rotation=20)
            ax.set(title=f"{layer} ({_DEPTHS.get(layer, '')}): {score}")
    fig.tight_layout()
    return fg._save(fig, Path(work), "somo_references.png")


def station_map_figure(work: Path, product: xr.Dataset, agg: Mapping, stations: pd.DataFrame,
                       layer: str = "sm_l1") -> str:
    """The station cells on the layer's mean map, coloured by R against the targets."""
    plt = fg._plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    fg._map(ax, fig, product, np.asarray(agg[f"{layer}_mean"]), f"station cells, R of {layer}",
            "Greys", f"mean {layer} (m³ m⁻³)")
    lon, lat, _, _ = fg._lonlat(product)
    s = stations[stations["layer"] == layer]
    sc = ax.scatter(lon[s["cell_x"].values], lat[s["cell_y"].values], c=s["R"], cmap="viridis",
                    vmin=0, vmax=1, edgecolor="k", s=40)
    fig.colorbar(sc, ax=ax, label="R (product vs rescaled ISMN)")
    return fg._save(fig, Path(work), "somo_stations.png")


def station_cell(targets: xr.Dataset, layer: str = "sm_l1") -> int:
    """The station cell with the most target days of ``layer`` (a default to look at)."""
    counts = targets[layer].notnull().sum("time").values
    return int(targets["cell"].values[int(np.argmax(counts))])


def station_series_figure(work: Path, product: xr.Dataset, targets: xr.Dataset, cell: int,
                          layers: Sequence[str] | None = None) -> str:
    """One station cell: per layer the product (± structural uncertainty) and the target.

    Parameters
    ----------
    work : path
        Folder the PNG goes into (``somo_station_<cell>.png``).
    product : xarray.Dataset
        The SoMo.ml product (time, y, x).
    targets : xarray.Dataset
        The targets stage's ``targets.zarr``: the rescaled ISMN series per
        ``cell`` with the cell's ``cell_y``/``cell_x`` on the product's window.
    cell : int
        A value of ``targets.cell``.
    """
    plt = fg._plt()
    layers = layers_of(product) if layers is None else list(layers)
    t = targets.sel(cell=cell)
    iy, ix = int(t["cell_y"].values), int(t["cell_x"].values)
    times = product["time"].values
    at = product[[*layers, *[_unc(n) for n in layers if _unc(n) in product.data_vars]]]
    at = at.isel(y=iy, x=ix).load()
    obs = t[layers].reindex(time=times).load()
    lon, lat, _, _ = fg._lonlat(product)
    fig, axes = plt.subplots(len(layers), 1, figsize=(11, 2.3 * len(layers)), sharex=True,
                             squeeze=False)
    for i, n in enumerate(layers):
        ax = axes[i, 0]
        v = at[n].values
        ax.plot(times, v, lw=1, color="C0", label=f"product {n}")
        if _unc(n) in at:
            u = at[_unc(n)].values
            ax.fill_between(times, v - u, v + u, color="C0", alpha=0.3, lw=0,
                            label="± structural uncertainty")
        ax.plot(times, obs[n].values, ".", ms=3, color="C3", label="ISMN target (rescaled)")
        count = f"n_stations_{n}"
        label = f", {int(t[count])} station(s)" if count in t.coords or count in t else ""
        ax.set(ylabel="m³ m⁻³", title=f"{n} ({_DEPTHS.get(n, '')}){label}")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"station cell {cell} (lat {lat[iy]:.2f}, lon {lon[ix]:.2f})")
    fig.tight_layout()
    return fg._save(fig, Path(work), f"somo_station_{cell}.png")


def _write(out: Path, csv: Mapping[str, pd.DataFrame | None], product, title,
           targets: xr.Dataset | None = None) -> Path:
    layers = layers_of(product)
    agg = aggregates(product, layers)
    sections = []
    figs = [("Maps per layer", maps_figure(out, product, agg, layers)),
            ("Hovmöller", hovmoller_figure(out, product, agg, layers)),
            ("Structural uncertainty", uncertainty_figure(out, product, agg, layers))]
    cv = csv.get("cv")
    if cv is not None and len(cv):
        figs.append(("Cross validation per fold", cv_figure(out, cv)))
    importance = csv.get("importance_folds")
    if importance is not None and len(importance):
        figs.append(("Permutation importance", importance_figure(out, importance)))
    references = csv.get("references_cells")
    if references is not None and len(references):
        figs.append(("Products at the stations, ranked", references_figure(out, references)))
    stations = csv.get("stations")
    if stations is not None and "R" in stations and len(stations):
        figs.append(("Station validation", station_map_figure(out, product, agg, stations)))
    if targets is not None and targets.sizes.get("cell", 0):
        cell = station_cell(targets, layers[0])
        figs.append((f"Station cell {cell} against the product",
                     station_series_figure(out, product, targets, cell, layers)))
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
        "search": ("Hyper-parameter search", "Per layer, every candidate combination "
                   "trained on every CV fold, scored as the CV table (mean over the folds of "
                   "the median over held-out cells); 'chosen' marks the layer's setting: its "
                   "fold models are the CV folds above, the final seeds train with it."),
        "importance": ("Permutation importance", "Per layer and input, the median over "
                       "folds of the change in the held-out cells' median R and NRMSE when "
                       "the input is permuted (each ERA5 feature in time, the statics "
                       "together across cells; the paper's Fig. 4)."),
        "era5": ("Against ERA5's own layers", "The product against ERA5's soil water of the "
                 "same layers (depth-weighted swvl1..3, the reference the targets were "
                 "rescaled to), median over every cell of the window, over the product "
                 "period: how far the network departs from the reanalysis it was forced by."),
        "references": ("Products at the stations", "Each product's layers at the station "
                       "cells against the stations' targets over the product period (the "
                       "paper's Figs. 6-7): median over the cells, ranked by anomaly R. "
                       "SoMo.ml's final models trained on these cells; the CV table is its "
                       "independent score."),
        "tcol": ("Triple collocation", "Error standard deviation (in the stations' units, "
                 "m3 m-3) and signal-to-noise ratio (dB) of SoMo.ml, ERA5 and the stations "
                 "from their covariances at the station cells (Gruber et al. 2016): median "
                 "over the cells with enough common days."),
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
                      era5: pd.DataFrame | None = None, truth: pd.DataFrame | None = None,
                      references: pd.DataFrame | None = None,
                      references_cells: pd.DataFrame | None = None,
                      tcol: pd.DataFrame | None = None,
                      importance: pd.DataFrame | None = None,
                      search: pd.DataFrame | None = None,
                      targets: xr.Dataset | None = None,
                      title: str = "casm_cloud SoMo.ml",
                      storage_options: Mapping | None = None) -> Path | str:
    """Write the SoMo.ml page (``index.html``, figures, CSV tables) into ``out_dir``.

    Parameters
    ----------
    out_dir : str or path-like
        Local folder or fsspec URL (drawn locally, then uploaded).
    product : xarray.Dataset
        ``sm_l1..3`` (time, y, x) and ``structural_uncertainty_l1..3``.
    cv, stations, era5, truth : pandas.DataFrame, optional
        The validate stage's tables (CV per fold and layer, per-cell scores at
        the station cells with ``cell_y``/``cell_x``, medians against ERA5's own
        layers, scores against the truth).
    references, references_cells, tcol : pandas.DataFrame, optional
        The products at the stations (ranked medians; per cell, drawn as boxes)
        and the triple collocation per cell (shown as medians).
    importance, search : pandas.DataFrame, optional
        The importance stage's table (drawn, medians over folds listed) and the
        train stage's hyper-parameter search (when the recipe has one).
    targets : xarray.Dataset, optional
        The targets stage's ``targets.zarr``: adds the series of the station
        cell with the most layer-1 target days against the product.

    Returns
    -------
    pathlib.Path or str
        Where ``index.html`` is.
    """
    if tcol is not None and len(tcol):
        tcol = tcol.groupby(["layer", "series"])[["err_std", "snr"]].median().reset_index()
    folds = importance
    if importance is not None and len(importance):
        importance = importance[importance["fold"].astype(str) == "median"].drop(
            columns="fold")
    csv = {"cv": cv, "search": search, "stations": stations, "era5": era5,
           "references": references, "references_cells": references_cells, "tcol": tcol,
           "importance": importance, "importance_folds": folds, "truth": truth}
    url = str(out_dir)
    remote = "://" in url and not url.startswith("file://")
    with tempfile.TemporaryDirectory(prefix="casm-somo-report-") as tmp:
        work = Path(tmp) / "report"
        work.mkdir()
        _write(work, csv, product, title, targets)
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
