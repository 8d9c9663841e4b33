"""Consistency across sensor changes: is there a step in product − reference?

A merged record (AMSR-E → SMOS → SMAP eras) is consistent when the sensor
changes leave no artificial step.  The check takes the spatial mean of
``product − reference`` at every time step (EASE2 cells are equal-area, so a
plain mean is the area mean; on a lat/lon grid cells are weighted by
cos(lat)), and compares the windows before and after each change date.

Test: Welch's t-test on the two windows of the mean difference series, with
the sample sizes replaced by their effective sizes under lag-1
autocorrelation, ``n_eff = n (1 − ρ₁) / (1 + ρ₁)`` (Zwiers & von Storch 1995,
*Taking serial correlation into account in tests of the mean*, J. Climate
8, 336-351).  Why Welch: the question is a shift of the mean, the two eras
may differ in variance (different sensors), and the windowed means of many
cells are close to normal.  Why the correction: n-day means of soil
moisture differences are strongly autocorrelated, and the plain test would
call almost any step "significant".  ``test="mannwhitney"`` gives the
rank-based alternative (robust to outliers such as RFI, but without the
autocorrelation correction, so its p-values are optimistic).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from casm_cloud.validation.exceptions import MissingKeyError, ValidationError

__all__ = ["consistency_steps", "mean_difference"]


def _array(obj: xr.Dataset | xr.DataArray, variable: str, what: str) -> xr.DataArray:
    if isinstance(obj, xr.Dataset):
        if variable not in obj.data_vars:
            raise MissingKeyError(f"{what} has no variable {variable!r} (has {sorted(obj.data_vars)})")
        obj = obj[variable]
    if "time" not in obj.dims:
        raise ValidationError(f"{what} has no 'time' dimension (dims: {obj.dims})")
    return obj


def mean_difference(product: xr.Dataset | xr.DataArray, reference: xr.Dataset | xr.DataArray,
                    *, variable: str = "sm") -> xr.DataArray:
    """Spatial mean of ``product − reference`` per time step, lazily.

    Parameters
    ----------
    product, reference : xarray.Dataset or DataArray
        On the same grid (aligned by coordinates, inner join), with ``time``.
    variable : str
        Variable to use from Datasets.

    Returns
    -------
    xarray.DataArray
        ``(time,)``; NaN where no cell has both values.  Lat/lon grids
        (a ``lat`` dimension) are weighted by cos(lat).

    Raises
    ------
    ValidationError
        If either input has no ``time`` dimension or they share no cell.
    MissingKeyError
        If ``variable`` is missing from a Dataset.
    """
    p = _array(product, variable, "product")
    r = _array(reference, variable, "reference")
    p, r = xr.align(p, r, join="inner")
    if p.size == 0:
        raise ValidationError("product and reference share no (time, cell): check grids and periods")
    diff = (p - r).astype(np.float64)
    space = [d for d in diff.dims if d != "time"]
    if "lat" in diff.dims:
        w = np.cos(np.deg2rad(diff["lat"]))
        return diff.weighted(w.fillna(0)).mean(space)
    return diff.mean(space)


def consistency_steps(product: xr.Dataset | xr.DataArray, reference: xr.Dataset | xr.DataArray,
                      change_dates: Sequence[str | np.datetime64 | pd.Timestamp], *,
                      variable: str = "sm", window_days: float = 365.0,
                      test: Literal["welch", "mannwhitney"] = "welch",
                      alpha: float = 0.05, min_values: int = 10) -> pd.DataFrame:
    """Step in the mean of product − reference at each sensor change.

    Parameters
    ----------
    product, reference : xarray.Dataset or DataArray
        The merged product and a reference on the same grid (e.g. ERA5 or
        the simulator's truth), both with ``time``.
    change_dates : sequence of date-like
        Dates of the sensor changes (e.g. ``["2010-01-17", "2015-03-31"]``).
    variable : str
        Variable to use from Datasets.
    window_days : float
        Length of the windows before ``[c − w, c)`` and after ``[c, c + w)``.
    test : {"welch", "mannwhitney"}
        Welch t-test with AR(1) effective sample sizes (default), or the
        two-sided Mann-Whitney U test.
    alpha : float
        Significance level for the ``significant`` column.
    min_values : int
        Fewest time steps in each window; fewer give NaN statistics.

    Returns
    -------
    pandas.DataFrame
        One row per change: ``date``, ``n_before``, ``n_after``,
        ``mean_before``, ``mean_after``, ``step`` (after − before),
        ``n_eff_before``, ``n_eff_after`` (Welch only), ``statistic``,
        ``p_value``, ``significant``, ``test``.

    Raises
    ------
    ValidationError
        For an unknown ``test``, no ``time`` dimension, or grids that share
        no cell.
    MissingKeyError
        If ``variable`` is missing from a Dataset.
    """
    if test not in ("welch", "mannwhitney"):
        raise ValidationError(f"test={test!r}: expected 'welch' or 'mannwhitney'")
    series = mean_difference(product, reference, variable=variable).compute().to_series()
    series = series.sort_index()
    window = pd.Timedelta(days=window_days)
    rows = []
    for date in change_dates:
        c = pd.Timestamp(date)
        before = series[(series.index >= c - window) & (series.index < c)].dropna().to_numpy()
        after = series[(series.index >= c) & (series.index < c + window)].dropna().to_numpy()
        row = {"date": c, "n_before": before.size, "n_after": after.size,
               "mean_before": np.nan, "mean_after": np.nan, "step": np.nan,
               "n_eff_before": np.nan, "n_eff_after": np.nan, "statistic": np.nan,
               "p_value": np.nan, "test": test}
        if before.size >= min_values and after.size >= min_values:
            row.update(mean_before=before.mean(), mean_after=after.mean(),
                       step=after.mean() - before.mean())
            if test == "welch":
                row.update(_welch_ar1(before, after))
            else:
                res = stats.mannwhitneyu(after, before, alternative="two-sided")
                row.update(statistic=float(res.statistic), p_value=float(res.pvalue))
        row["significant"] = bool(np.isfinite(row["p_value"]) and row["p_value"] < alpha)
        rows.append(row)
    return pd.DataFrame(rows)


def _lag1(x: np.ndarray) -> float:
    """Lag-1 autocorrelation, clipped to [0, 0.99] (negative ρ is not credited)."""
    a = x - x.mean()
    den = float((a * a).sum())
    if den == 0.0 or a.size < 3:
        return 0.0
    return float(np.clip((a[1:] * a[:-1]).sum() / den, 0.0, 0.99))


def _welch_ar1(before: np.ndarray, after: np.ndarray) -> dict:
    """Welch's t-test with AR(1) effective sample sizes (two-sided)."""
    out = {}
    var, neff = [], []
    for x, key in ((before, "n_eff_before"), (after, "n_eff_after")):
        rho = _lag1(x)
        n_eff = max(2.0, x.size * (1.0 - rho) / (1.0 + rho))
        out[key] = n_eff
        neff.append(n_eff)
        var.append(x.var(ddof=1) / n_eff)
    se2 = var[0] + var[1]
    if se2 == 0.0:
        return {**out, "statistic": np.nan, "p_value": np.nan}
    t = (after.mean() - before.mean()) / np.sqrt(se2)
    # Welch-Satterthwaite degrees of freedom with the effective sizes
    dof = se2**2 / (var[0] ** 2 / (neff[0] - 1.0) + var[1] ** 2 / (neff[1] - 1.0))
    p = 2.0 * stats.t.sf(abs(t), dof)
    return {**out, "statistic": float(t), "p_value": float(p)}
