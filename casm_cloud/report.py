"""The product report: figures, tables and one HTML page.

:func:`write_report` draws, beside ``index.html``: maps of the mean soil
moisture and its coefficient of variation, a Hovmöller diagram of zonal
(per-row) means with the sensor changes marked, the global-mean series, the
share of each network (``source``) over time, maps of the structural and
data uncertainty, validation figures when a station table is given, and, on
simulated data (``truth`` given), scores against the truth
(:func:`scores_against_truth`).  Tables are written as CSV and shown in the
page.

Everything large stays lazy: the report asks dask for small aggregates only
(time means, zonal and spatial means, per-pixel sums), in a few
``dask.compute`` calls that stream over the time chunks.

Public API::

    write_report(out_dir, product=product, truth=truth, validation=table)
    scores_against_truth(product, truth)
    sensor_changes_from_source(product)
"""

from __future__ import annotations

import html
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.validation.consistency import consistency_steps
from casm_cloud.validation.metrics import pearson_r, ubrmse

__all__ = ["write_report", "scores_against_truth", "sensor_changes_from_source",
           "harmonic_anomaly"]

log = logging.getLogger(__name__)

_OMEGA_MIN_VALUES = 10  # fewer valid values: the cycle is the mean (no sinusoid)


# --------------------------------------------------------------------------- scores
def _require(ds: xr.Dataset, name: str, what: str) -> xr.DataArray:
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{what}: expected an xarray.Dataset, got {type(ds).__name__}")
    if name not in ds.data_vars:
        raise KeyError(f"{what} has no variable {name!r} (has {sorted(ds.data_vars)})")
    da = ds[name]
    if "time" not in da.dims:
        raise ValueError(f"{what} variable {name!r} has no 'time' dimension (dims {da.dims})")
    return da


def _year_phase(times) -> np.ndarray:
    """ω·t with the phase taken from the position in the calendar year (radians)."""
    t = pd.DatetimeIndex(times)
    days = np.where(t.is_leap_year, 366.0, 365.0)
    frac = (t.day_of_year - 1 + (t.hour * 3600 + t.minute * 60 + t.second) / 86400.0) / days
    return 2.0 * np.pi * np.asarray(frac, dtype=np.float64)


def harmonic_anomaly(da: xr.DataArray) -> xr.DataArray:
    """Anomaly from a per-pixel annual cycle ``b + a·sin ωt + c·cos ωt`` (lazy result).

    The cycle is the least-squares fit of one annual harmonic, with the phase
    taken from the position in the calendar year (the seasonal model of
    DESIGN.md §3).  The normal equations need six per-pixel sums of the
    basis products and three of the data; these are computed with dask
    reductions (streaming over time chunks) and solved per pixel; pixels with
    fewer than 10 valid values use their mean.  This is the report's own
    small fit, so truth and product get the same definition of "residual".

    Parameters
    ----------
    da : xarray.DataArray
        With a ``time`` dimension.

    Returns
    -------
    xarray.DataArray
        ``da`` minus its fitted cycle (float64, lazy if ``da`` is); NaN where
        ``da`` is NaN.

    Raises
    ------
    ValueError
        If ``da`` has no ``time`` dimension.
    """
    if "time" not in da.dims:
        raise ValueError(f"harmonic_anomaly: {da.name!r} has no 'time' dimension")
    wt = _year_phase(da["time"].values)
    basis = xr.DataArray(np.stack([np.ones_like(wt), np.sin(wt), np.cos(wt)]),
                         dims=("basis", "time"), coords={"time": da["time"]})
    x = da.astype(np.float64)
    valid = x.notnull().astype(np.float64)
    gram = [[None] * 3 for _ in range(3)]
    for i in range(3):
        for j in range(i, 3):
            gram[i][j] = gram[j][i] = (valid * basis[i] * basis[j]).sum("time")
    rhs = [(x.fillna(0.0) * basis[i]).sum("time") for i in range(3)]
    flat = [gram[i][j] for i in range(3) for j in range(3)] + rhs
    values = dask.compute(*flat)
    g = np.stack([np.asarray(v) for v in values[:9]], axis=-1).reshape(*values[0].shape, 3, 3)
    r = np.stack([np.asarray(v) for v in values[9:]], axis=-1)
    n = g[..., 0, 0]
    coef = np.einsum("...ij,...j->...i", np.linalg.pinv(g), r)
    mean = np.where(n > 0, r[..., 0] / np.maximum(n, 1), np.nan)
    few = n < _OMEGA_MIN_VALUES
    coef[few] = 0.0
    coef[..., 0] = np.where(few, mean, coef[..., 0])
    other = [d for d in da.dims if d != "time"]
    c = xr.DataArray(coef, dims=(*other, "basis"),
                     coords={d: da[d] for d in other if d in da.coords})
    cycle = (c * basis).sum("basis")
    return x - cycle.transpose(*da.dims)


def _median_step_days(times) -> float:
    t = np.asarray(times, dtype="datetime64[ns]")
    if t.size < 2:
        return float("inf")
    return float(np.median(np.diff(t)) / np.timedelta64(1, "D"))


def _truth_on_product_times(truth: xr.DataArray, product: xr.DataArray) -> xr.DataArray:
    """Truth on the product's time labels, averaged into its n-day bins if finer."""
    nday = product["time"].attrs.get("casm_nday")
    p_step = float(nday) if nday is not None else _median_step_days(product["time"].values)
    if _median_step_days(truth["time"].values) < p_step and np.isfinite(p_step):
        from casm_cloud.aggregate import DEFAULT_ANCHOR, nday_mean

        anchor = product["time"].attrs.get("casm_anchor", DEFAULT_ANCHOR)
        truth = nday_mean(truth.to_dataset(name="v"), max(int(round(p_step)), 1),
                          anchor=anchor)["v"]
    common = np.intersect1d(product["time"].values, truth["time"].values)
    if common.size == 0:
        raise ValueError("truth and product share no time step (after n-day binning of a "
                         "finer truth); check their periods and bins")
    return truth.sel(time=common)


def scores_against_truth(product: xr.Dataset, truth: xr.Dataset, *, variable: str = "sm",
                         truth_variable: str = "sm_l1",
                         sensor_changes: Mapping[str, str] | None = None,
                         window_days: float = 365.0) -> dict:
    """Scores of a product against the known truth (simulated data).

    Parameters
    ----------
    product : xarray.Dataset
        With ``variable`` (time, y, x).
    truth : xarray.Dataset
        With ``truth_variable`` on the same grid; its times must include the
        product's, or it is averaged into the product's n-day bins (anchor
        from the product's ``time`` attributes).
    variable, truth_variable : str
    sensor_changes : mapping of label -> date, optional
        Where to measure the step in the global-mean bias; default: the
        changes of the product's ``source`` variable
        (:func:`sensor_changes_from_source`), none if it has none.
    window_days : float
        Window before and after each change.

    Returns
    -------
    dict
        ``R``, ``ubRMSE``, ``residual_R``: medians over pixels of the
        per-pixel metrics; ``bias``: mean of product − truth;
        ``global_R``, ``global_ubRMSE``: of the spatial-mean series;
        ``n_pixels``: pixels with at least 3 pairs; ``bias_steps``:
        ``{label: step}`` (after − before, m3 m-3); ``bias_step``: the step
        at the first change into a SMOS era (label or flag mentioning
        "smos"), else the largest one, NaN without changes.

    Raises
    ------
    KeyError
        If a variable is missing.
    ValueError
        If the product and the truth share no time step or no cell.
    """
    p = _require(product, variable, "product")
    t = _require(truth, truth_variable, "truth")
    t = _truth_on_product_times(t, p)
    p, t = xr.align(p, t, join="inner")
    if p.size == 0:
        raise ValueError("product and truth share no (time, y, x) cell: check grids and periods")
    p_anom = harmonic_anomaly(p)
    t_anom = harmonic_anomaly(t)
    both = p.notnull() & t.notnull()
    space = [d for d in p.dims if d != "time"]
    p_glob = p.where(both).mean(space)
    t_glob = t.where(both).mean(space)
    r, ub, rr, n, bias, gr, gub = dask.compute(
        pearson_r(p, t), ubrmse(p, t), pearson_r(p_anom, t_anom), both.sum("time"),
        (p - t).mean(), pearson_r(p_glob, t_glob), ubrmse(p_glob, t_glob))
    ok = np.asarray(n) >= 3
    scores = {
        "R": float(np.nanmedian(np.where(ok, r, np.nan))) if ok.any() else float("nan"),
        "ubRMSE": float(np.nanmedian(np.where(ok, ub, np.nan))) if ok.any() else float("nan"),
        "residual_R": float(np.nanmedian(np.where(ok, rr, np.nan))) if ok.any() else float("nan"),
        "bias": float(bias),
        "global_R": float(gr),
        "global_ubRMSE": float(gub),
        "n_pixels": int(ok.sum()),
    }
    changes = dict(sensor_changes) if sensor_changes is not None else (
        sensor_changes_from_source(product) if "source" in product.data_vars else {})
    steps: dict[str, float] = {}
    if changes:
        table = consistency_steps(p, t, list(changes.values()), window_days=window_days)
        steps = {label: float(s) for label, s in zip(changes, table["step"], strict=True)}
    scores["bias_steps"] = steps
    scores["bias_step"] = _main_step(steps, changes)
    return scores


def _main_step(steps: dict[str, float], changes: Mapping[str, str]) -> float:
    """The step at the AMSR-E → SMOS change: the first change into a SMOS era."""
    if not steps:
        return float("nan")
    order = sorted(steps, key=lambda k: pd.Timestamp(changes[k]))
    for label in order:
        after = label.split("→")[-1].lower()
        if "smos" in after:
            return steps[label]
    finite = {k: v for k, v in steps.items() if np.isfinite(v)}
    return max(finite.values(), key=abs) if finite else float("nan")


def sensor_changes_from_source(product: xr.Dataset, *, min_share: float = 0.5) -> dict[str, str]:
    """Dates where the dominant network of ``source`` changes.

    Parameters
    ----------
    product : xarray.Dataset
        With an integer ``source`` variable carrying CF ``flag_values`` and
        ``flag_meanings`` (0, ``none`` and ``missing`` are ignored).
    min_share : float
        A time step counts only where its dominant network holds at least
        this share of the valid cells (so sparse steps do not flicker).

    Returns
    -------
    dict of str to str
        ``"<before> → <after>" -> "YYYY-MM-DD"`` (first step of the new era).

    Raises
    ------
    KeyError
        If ``source`` is missing.
    """
    src = _require(product, "source", "product")
    values = np.atleast_1d(src.attrs.get("flag_values", []))
    meanings = str(src.attrs.get("flag_meanings", "")).split()
    names = dict(zip((int(v) for v in values), meanings, strict=False))
    codes = [v for v in names if v != 0 and names[v] not in ("none", "missing")]
    if not codes:
        return {}
    space = [d for d in src.dims if d != "time"]
    counts = np.stack(dask.compute(*[(src == v).sum(space) for v in codes]), axis=-1)
    total = counts.sum(axis=-1)
    dominant = np.asarray(codes)[counts.argmax(axis=-1)]
    share = counts.max(axis=-1) / np.maximum(total, 1)
    keep = (total > 0) & (share >= min_share)
    times = src["time"].values[keep]
    dom = dominant[keep]
    out = {}
    for i in np.flatnonzero(dom[1:] != dom[:-1]) + 1:
        label = f"{names[int(dom[i - 1])]} → {names[int(dom[i])]}"
        out[label] = str(pd.Timestamp(times[i]).date())
    return out


# --------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
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


# --------------------------------------------------------------------------- page
_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0}table{border-collapse:collapse;
font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}
h2{border-bottom:1px solid #aaa;margin-top:1.6em}.note{color:#555;font-size:.9em}"""


def _table_html(df: pd.DataFrame, csv: str | None) -> str:
    link = f'<p class="note">CSV: <a href="{html.escape(csv)}">{html.escape(csv)}</a></p>' \
        if csv else ""
    return df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="–",
                      border=0) + link


def _product_var(product: xr.Dataset, name: str) -> xr.DataArray | None:
    return product[name] if name in product.data_vars else None


def write_report(out_dir: str | os.PathLike, *, product: xr.Dataset,
                 truth: xr.Dataset | None = None, validation: pd.DataFrame | None = None,
                 consistency: pd.DataFrame | None = None,
                 sensor_changes: Mapping[str, str] | None = None, scores: dict | None = None,
                 title: str = "casm_cloud report",
                 validation_pairs: Mapping[str, xr.Dataset] | None = None,
                 variable: str = "sm", truth_variable: str = "sm_l1") -> Path | str:
    """Write ``index.html`` with its figures and tables into ``out_dir``.

    Parameters
    ----------
    out_dir : str or path-like
        A local folder (created) or an fsspec URL (the report is drawn in a
        temporary folder and uploaded).  Files of an earlier report there are
        replaced.
    product : xarray.Dataset
        The product: ``sm`` (time, y, x) and optionally ``sm_residual``,
        ``seasonal_cycle``, ``structural_uncertainty``, ``data_uncertainty``,
        ``source`` (CF flags); ``lat(y)``, ``lon(x)`` coordinates.
    truth : xarray.Dataset, optional
        Simulated truth (``sm_l1``): adds the scores section.
    validation : pandas.DataFrame, optional
        Per-station metrics (:func:`casm_cloud.validation.validate_product`):
        box plots, a station map and the table.
    consistency : pandas.DataFrame, optional
        Steps at sensor changes (:func:`casm_cloud.validation.consistency_steps`).
    sensor_changes : mapping of label -> date, optional
        Marked on time axes; default: from ``source``
        (:func:`sensor_changes_from_source`).
    scores : dict, optional
        Scores against the truth if already computed (else computed when
        ``truth`` is given).
    title : str
    validation_pairs : mapping of name -> Dataset, optional
        Matched pairs (:func:`casm_cloud.validation.matched_pairs`) for
        scatter plots.
    variable, truth_variable : str
        Soil-moisture variables of the product and the truth.

    Returns
    -------
    pathlib.Path or str
        The path (or URL) of ``index.html``.

    Raises
    ------
    KeyError
        If ``variable`` (or ``truth_variable``) is missing.
    ValueError
        If the product has no ``time`` dimension or truth and product share
        no cell.
    """
    sm = _require(product, variable, "product")
    if truth is not None:
        _require(truth, truth_variable, "truth")
    url = str(out_dir)
    if "://" in url and not url.startswith("file://"):
        with tempfile.TemporaryDirectory(prefix="casm-report-") as tmp:
            _write_local(Path(tmp), product, sm, truth, validation, consistency, sensor_changes,
                         scores, title, validation_pairs, variable, truth_variable)
            from casm_cloud.storage import join, url_to_fs

            fs, path = url_to_fs(url)
            fs.put(tmp.rstrip("/") + "/", path, recursive=True)
            return join(url, "index.html")
    out = Path(url.removeprefix("file://"))
    return _write_local(out, product, sm, truth, validation, consistency, sensor_changes, scores,
                        title, validation_pairs, variable, truth_variable)


def _write_local(out: Path, product, sm, truth, validation, consistency, sensor_changes, scores,
                 title, validation_pairs, variable, truth_variable) -> Path:
    plt = _plt()
    if out.exists() and any(out.iterdir()) and not (out / "index.html").exists():
        raise ValueError(f"report folder {out} exists and holds no index.html; refusing to "
                         "replace a folder that is not a report")
    # Draw into a fresh folder and move it in place, so an interrupted report
    # never leaves an index.html that mixes two runs.
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".report-", dir=out.parent))
    try:
        changes = dict(sensor_changes) if sensor_changes is not None else (
            sensor_changes_from_source(product) if "source" in product.data_vars else {})
        sections: list[str] = []
        space = [d for d in sm.dims if d != "time"]

        # ---- small aggregates, one pass -------------------------------------------
        lazy = {
            "mean": sm.mean("time"),
            "std": sm.std("time"),
            "valid": sm.notnull().mean("time"),
            "zonal": sm.mean("x") if "x" in sm.dims else sm.mean(space[-1]),
            "global": sm.mean(space),
        }
        for name in ("structural_uncertainty", "data_uncertainty"):
            if (v := _product_var(product, name)) is not None:
                lazy[name] = v.mean("time")
        src = _product_var(product, "source")
        flag_names = {}
        if src is not None and "flag_values" in src.attrs:
            values = np.atleast_1d(src.attrs["flag_values"])
            meanings = str(src.attrs.get("flag_meanings", "")).split()
            flag_names = {int(v): (meanings[i] if i < len(meanings) else str(v))
                          for i, v in enumerate(values)}
            for code in flag_names:
                lazy[f"source_{code}"] = (src == code).mean(space)
        keys = list(lazy)
        agg = dict(zip(keys, dask.compute(*[lazy[k] for k in keys]), strict=True))
        times = pd.DatetimeIndex(sm["time"].values)

        # ---- maps of mean and coefficient of variation -----------------------------
        mean = np.asarray(agg["mean"])
        with np.errstate(invalid="ignore", divide="ignore"):
            cv = np.asarray(agg["std"]) / mean
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        _map(axes[0], fig, product, mean, "mean soil moisture", "YlGnBu", "m³ m⁻³")
        _map(axes[1], fig, product, cv, "coefficient of variation", "magma_r", "std / mean")
        fig.tight_layout()
        maps = _save(fig, work, "maps_mean_cv.png")

        # ---- Hovmöller and global mean ----------------------------------------------
        zonal = np.asarray(agg["zonal"])  # (time, y)
        fig, ax = plt.subplots(figsize=(11, 3.8))
        _, lat, _, yl = _lonlat(product)
        mesh = ax.pcolormesh(times, lat, zonal.T, shading="nearest", cmap="YlGnBu")
        fig.colorbar(mesh, ax=ax, label=f"zonal mean {variable} (m³ m⁻³)")
        ax.set(title="Hovmöller diagram of zonal (per-row) means", ylabel=yl)
        _mark_changes(ax, changes)
        hov = _save(fig, work, "hovmoller.png")

        truth_global = None
        if truth is not None:
            t_on = _truth_on_product_times(truth[truth_variable], sm)
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
        glob = _save(fig, work, "global_mean.png")

        figs = [("Mean and variability", maps), ("Hovmöller", hov), ("Global mean", glob)]
        if flag_names:
            fig, ax = plt.subplots(figsize=(11, 2.8))
            shares = np.stack([np.asarray(agg[f"source_{c}"]) for c in flag_names])
            ax.stackplot(times, shares, labels=list(flag_names.values()))
            ax.set(ylim=(0, 1), ylabel="share of cells", title="network that made each value")
            ax.legend(fontsize=7, loc="upper left", ncol=len(flag_names))
            _mark_changes(ax, changes)
            figs.append(("Sources", _save(fig, work, "source_share.png")))
        unc = [k for k in ("structural_uncertainty", "data_uncertainty") if k in agg]
        if unc:
            fig, axes = plt.subplots(1, len(unc), figsize=(5.5 * len(unc), 4), squeeze=False)
            for ax, k in zip(axes[0], unc, strict=True):
                _map(ax, fig, product, np.asarray(agg[k]), f"mean {k.replace('_', ' ')}",
                     "OrRd", "m³ m⁻³")
            fig.tight_layout()
            figs.append(("Uncertainty", _save(fig, work, "uncertainty_maps.png")))

        # ---- summary table ----------------------------------------------------------
        summary = pd.DataFrame([
            {"quantity": "time steps", "value": len(times)},
            {"quantity": "first", "value": str(times[0].date()) if len(times) else "–"},
            {"quantity": "last", "value": str(times[-1].date()) if len(times) else "–"},
            {"quantity": "grid cells", "value": int(np.prod([sm.sizes[d] for d in space]))},
            {"quantity": f"mean {variable} (m³ m⁻³)", "value": f"{np.nanmean(mean):.4f}"},
            {"quantity": "valid fraction", "value": f"{float(np.mean(agg['valid'])):.3f}"},
        ] + [{"quantity": f"mean {k.replace('_', ' ')} (m³ m⁻³)",
              "value": f"{np.nanmean(np.asarray(agg[k])):.4f}"} for k in unc])
        summary.to_csv(work / "summary.csv", index=False)
        sections.append("<h2>Summary</h2>" + _table_html(summary, "summary.csv"))
        if changes:
            ch = pd.DataFrame({"change": list(changes), "date": list(changes.values())})
            sections.append("<h3>Sensor changes</h3>" + _table_html(ch, None))
        for head, name in figs:
            sections.append(f'<h2>{html.escape(head)}</h2><img src="{name}" alt="{head}">')

        # ---- truth ------------------------------------------------------------------
        if truth is not None:
            if scores is None:
                scores = scores_against_truth(product, truth, variable=variable,
                                              truth_variable=truth_variable,
                                              sensor_changes=changes or None)
        if scores is not None:
            flat = {k: v for k, v in scores.items() if not isinstance(v, dict)}
            st = pd.DataFrame({"score": list(flat), "value": list(flat.values())})
            steps = scores.get("bias_steps") or {}
            st = pd.concat([st, pd.DataFrame({"score": [f"bias step: {k}" for k in steps],
                                              "value": list(steps.values())})],
                           ignore_index=True)
            st.to_csv(work / "scores_vs_truth.csv", index=False)
            sections.append(
                "<h2>Scores against the truth</h2><p class='note'>Medians over pixels of "
                "Pearson R, ubRMSE and residual R (anomalies from each pixel's annual harmonic "
                "cycle), global scores of the spatial-mean series, and the step in the global "
                "mean bias (product − truth) across each sensor change.</p>"
                + _table_html(st, "scores_vs_truth.csv"))

        # ---- consistency -----------------------------------------------------------
        if consistency is not None:
            consistency.to_csv(work / "consistency.csv", index=False)
            sections.append("<h2>Consistency at sensor changes</h2>"
                            + _table_html(consistency, "consistency.csv"))

        # ---- validation ------------------------------------------------------------
        if validation is not None:
            from casm_cloud.validation import figures as vfig

            validation.to_csv(work / "validation.csv", index=False)
            parts = ["<h2>Validation against stations</h2>"]
            metrics = [m for m in ("R", "ubRMSE", "bias", "anomaly_R") if m in validation]
            if metrics and "network" in validation:
                vfig.boxplot_by_network(validation, metrics, path=work / "validation_boxplot.png")
                parts.append('<img src="validation_boxplot.png" alt="box plots">')
            if {"lat", "lon", "R"} <= set(validation.columns):
                vfig.station_map(validation, "R", path=work / "validation_map_R.png")
                parts.append('<img src="validation_map_R.png" alt="station map">')
            for i, (name, pairs) in enumerate((validation_pairs or {}).items()):
                vfig.scatter(pairs, title=name, path=work / f"validation_scatter_{i}.png")
                parts.append(f'<img src="validation_scatter_{i}.png" alt="scatter {i}">')
            parts.append(_table_html(validation, "validation.csv"))
            sections.append("".join(parts))

        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
                f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
                f"<h1>{html.escape(title)}</h1>"
                f"<p class='note'>Generated {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M} UTC "
                f"by casm_cloud.</p>" + "\n".join(sections) + "</body></html>")
        (work / "index.html").write_text(page, encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("report written to %s", out / "index.html")
    return out / "index.html"
