"""Scores of a product against the simulated truth, and the sensor changes of a product.

The residual scores (``residual_R``) use the seasonal cycle of
:mod:`casm_cloud.seasonal` — its fit, its ``min_obs`` and its median
fallback — so the report scores the same residual the networks learn.
Everything large stays lazy: scores are medians of per-pixel metrics that
dask streams over the time chunks.
"""

from __future__ import annotations

from collections.abc import Mapping

import dask
import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.errors import UserError
from casm_cloud.seasonal import deseasonalize, fit_seasonal_cycle
from casm_cloud.validation.consistency import consistency_steps
from casm_cloud.validation.metrics import pearson_r, ubrmse

__all__ = ["ReportError", "MissingVariableError", "scores_against_truth",
           "sensor_changes_from_source", "harmonic_anomaly", "era_masks", "eras_from_changes",
           "station_scores_by_era"]


class ReportError(UserError, ValueError):
    """A product, truth or report folder the report cannot use."""


class MissingVariableError(UserError, KeyError):
    """A variable the product or the truth does not have.

    ``str()`` is the message itself (a plain ``KeyError`` shows its repr).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _require(ds: xr.Dataset, name: str, what: str) -> xr.DataArray:
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{what}: expected an xarray.Dataset, got {type(ds).__name__}")
    if name not in ds.data_vars:
        raise MissingVariableError(f"{what} has no variable {name!r} "
                                   f"(has {sorted(ds.data_vars)})")
    da = ds[name]
    if "time" not in da.dims:
        raise ReportError(f"{what} variable {name!r} has no 'time' dimension (dims {da.dims})")
    return da


def harmonic_anomaly(da: xr.DataArray, *, min_obs: int = 40) -> xr.DataArray:
    """``da`` minus its seasonal cycle, as the networks learn it (lazy if ``da`` is).

    The cycle is :func:`casm_cloud.seasonal.fit_seasonal_cycle` of ``da``
    (in its own precision, as the seasonal stage fits it): a one-year
    sinusoid per pixel, or the median of a pixel with fewer than
    ``min_obs`` valid values.  The residual is taken in float64, as the
    training samples take it (:mod:`casm_cloud.pairs`).

    Parameters
    ----------
    da : xarray.DataArray
        With a datetime64 ``time`` dimension.
    min_obs : int
        Fewest valid values for a sine fit (the recipe's ``seasonal.min_obs``).

    Returns
    -------
    xarray.DataArray
        float64, NaN where ``da`` is NaN.

    Raises
    ------
    casm_cloud.seasonal.SeasonalError
        If ``da`` has no datetime64 ``time`` coordinate or ``min_obs < 4``.
    """
    params = fit_seasonal_cycle(da, dim="time", min_obs=min_obs)
    residual, _ = deseasonalize(da.astype(np.float64), params, dim="time")
    return residual


def _median_step_days(times) -> float:
    t = np.asarray(times, dtype="datetime64[ns]")
    if t.size < 2:
        return float("inf")
    return float(np.median(np.diff(t)) / np.timedelta64(1, "D"))


def truth_on_product_times(truth: xr.DataArray, product: xr.DataArray) -> xr.DataArray:
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
        raise ReportError("truth and product share no time step (after n-day binning of a "
                          "finer truth); check their periods and bins")
    return truth.sel(time=common)


def scores_against_truth(product: xr.Dataset, truth: xr.Dataset, *, variable: str = "sm",
                         truth_variable: str = "sm_l1",
                         sensor_changes: Mapping[str, str] | None = None,
                         eras: Mapping[str, str | None] | None = None,
                         window_days: float = 365.0, min_obs: int = 40,
                         storage_options: Mapping | None = None) -> dict:
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
    eras : mapping of label -> first day, optional
        The record's eras in order, each from its first day (``None``: the
        start of the record) to the next era's first day; default: one era
        before and one after each sensor change (:func:`eras_from_changes`).
    window_days : float
        Window before and after each change.
    min_obs : int
        ``min_obs`` of the seasonal fit behind ``residual_R`` (the recipe's
        ``seasonal.min_obs``; see :func:`harmonic_anomaly`).
    storage_options : mapping, optional
        The run's fsspec options (the recipe passes them); the inputs are
        opened datasets, so nothing here is read with them.

    Returns
    -------
    dict
        ``R``, ``ubRMSE``, ``residual_R``: medians over pixels of the
        per-pixel metrics; ``bias``: mean of product − truth;
        ``global_R``, ``global_ubRMSE``: of the spatial-mean series;
        ``n_pixels``: pixels with at least 3 pairs; ``bias_steps``:
        ``{label: step}`` (after − before, m3 m-3); ``bias_step``: the step
        at the first change into a SMOS era (label or flag mentioning
        "smos"), else the largest one, NaN without changes; ``eras``:
        ``{label: {"start", "end", "R", "ubRMSE", "bias", "n_pixels"}}``, the
        median cell R and ubRMSE, the mean bias and the cell count per era.

    Raises
    ------
    MissingVariableError
        If a variable is missing (a ``KeyError``).
    ReportError
        If the product and the truth share no time step or no cell.
    """
    p = _require(product, variable, "product")
    t = _require(truth, truth_variable, "truth")
    t = truth_on_product_times(t, p)
    p, t = xr.align(p, t, join="inner")
    if p.size == 0:
        raise ReportError("product and truth share no (time, y, x) cell: check grids and periods")
    p_anom = harmonic_anomaly(p, min_obs=min_obs)
    t_anom = harmonic_anomaly(t, min_obs=min_obs)
    both = p.notnull() & t.notnull()
    space = [d for d in p.dims if d != "time"]
    p_glob = p.where(both).mean(space)
    t_glob = t.where(both).mean(space)
    r, ub, rr, n, bias, gr, gub = dask.compute(
        pearson_r(p, t), ubrmse(p, t), pearson_r(p_anom, t_anom), both.sum("time"),
        (p - t).mean(), pearson_r(p_glob, t_glob), ubrmse(p_glob, t_glob))
    ok = np.asarray(n) >= 3

    def median(v, ok=ok):
        return float(np.nanmedian(np.where(ok, v, np.nan))) if ok.any() else float("nan")

    scores = {"R": median(r), "ubRMSE": median(ub), "residual_R": median(rr),
              "bias": float(bias), "global_R": float(gr), "global_ubRMSE": float(gub),
              "n_pixels": int(ok.sum())}
    changes = dict(sensor_changes) if sensor_changes is not None else (
        sensor_changes_from_source(product) if "source" in product.data_vars else {})
    steps: dict[str, float] = {}
    if changes:
        table = consistency_steps(p, t, list(changes.values()), window_days=window_days)
        steps = {label: float(s) for label, s in zip(changes, table["step"], strict=True)}
    scores["bias_steps"] = steps
    scores["bias_step"] = _main_step(steps, changes)
    scores["eras"] = _era_scores(p, t, eras if eras is not None else eras_from_changes(changes),
                                 median)
    return scores


def eras_from_changes(changes: Mapping[str, str]) -> dict[str, str | None]:
    """Eras of a record from its sensor changes: ``{label: first day}`` in order.

    ``{"A → B": d1, "B → C": d2}`` gives ``{"A": None, "B": d1, "C": d2}``; a
    label without an arrow names the era it starts (the first era is "before" it).
    """
    order = sorted(changes, key=lambda k: pd.Timestamp(changes[k]))
    if not order:
        return {}
    first = order[0]
    out: dict[str, str | None] = {
        first.split("→")[0].strip() if "→" in first else f"before {first}": None}
    for label in order:
        name = label.split("→")[-1].strip() if "→" in label else label
        while name in out:
            name += "'"
        out[name] = str(changes[label])
    return out


def era_masks(times, eras: Mapping[str, str | None]) -> dict[str, tuple[np.ndarray, str, str]]:
    """Boolean masks of ``times`` for each era: ``{label: (mask, first, last)}``.

    An era runs from its first day (``None``: the first time) up to, not
    including, the first day of the next era in date order.  Eras without a
    time step are left out.
    """
    t = np.asarray(times, dtype="datetime64[ns]")
    if t.size == 0:
        return {}
    starts = {k: (np.datetime64(v, "ns") if v is not None else t.min()) for k, v in eras.items()}
    order = sorted(starts, key=lambda k: starts[k])
    out = {}
    for i, label in enumerate(order):
        lo = starts[label]
        hi = starts[order[i + 1]] if i + 1 < len(order) else None
        mask = (t >= lo) & (t < hi) if hi is not None else t >= lo
        if mask.any():
            out[label] = (mask, str(t[mask].min().astype("datetime64[D]")),
                          str(t[mask].max().astype("datetime64[D]")))
    return out


def _era_scores(p: xr.DataArray, t: xr.DataArray, eras: Mapping[str, str | None],
                median) -> dict[str, dict]:
    """Median cell R, ubRMSE, mean bias and pixel count of ``p`` against ``t`` per era."""
    masks = era_masks(p["time"].values, eras)
    if not masks:
        return {}
    jobs = []
    for mask, _, _ in masks.values():
        sel = xr.DataArray(mask, dims="time")
        pe, te = p.isel(time=sel), t.isel(time=sel)
        both = pe.notnull() & te.notnull()
        jobs.append((pearson_r(pe, te), ubrmse(pe, te), (pe - te).mean(), both.sum("time")))
    done = dask.compute(*jobs)
    out = {}
    for (label, (_, first, last)), (r, ub, bias, n) in zip(masks.items(), done, strict=True):
        ok = np.asarray(n) >= 3
        out[label] = {"start": first, "end": last, "R": median(r, ok), "ubRMSE": median(ub, ok),
                      "bias": float(bias), "n_pixels": int(ok.sum())}
    return out


def station_scores_by_era(pairs: xr.Dataset, eras: Mapping[str, str | None], *,
                          min_pairs: int = 10) -> dict[str, dict]:
    """Scores against stations per era: medians over stations of R, ubRMSE and bias.

    Parameters
    ----------
    pairs : xarray.Dataset
        ``product`` and ``reference`` on ``(station, time)``, as from
        :func:`casm_cloud.validation.evaluate.matched_pairs`.
    eras : mapping of label -> first day
        As in :func:`scores_against_truth`.
    min_pairs : int
        Fewest pairs for a station to count in an era.

    Returns
    -------
    dict
        ``{label: {"start", "end", "R", "ubRMSE", "bias", "n_stations"}}``.
    """
    from casm_cloud.validation.metrics import bias as bias_

    out = {}
    for label, (mask, first, last) in era_masks(pairs["time"].values, eras).items():
        sel = xr.DataArray(mask, dims="time")
        pe = pairs["product"].isel(time=sel)
        re = pairs["reference"].isel(time=sel)
        n = np.asarray((pe.notnull() & re.notnull()).sum("time"))
        ok = n >= min_pairs
        r, ub, b = (np.asarray(f(pe, re)) for f in (pearson_r, ubrmse, bias_))

        def med(v, ok=ok):
            return float(np.nanmedian(np.where(ok, v, np.nan))) if ok.any() else float("nan")

        out[label] = {"start": first, "end": last, "R": med(r), "ubRMSE": med(ub),
                      "bias": med(b), "n_stations": int(ok.sum())}
    return out


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
    MissingVariableError
        If ``source`` is missing (a ``KeyError``).
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
