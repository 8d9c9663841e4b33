"""Steps in the global mean of product - reference at sensor changes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud.validation import consistency_steps
from casm_cloud.validation.consistency import mean_difference


def _fields(step: float, seed: int = 0):
    """Reference with seasonality; product = reference + AR(1) error + optional step."""
    rng = np.random.default_rng(seed)
    time = pd.date_range("2008-01-01", "2013-12-31", freq="3D")
    nt, ny, nx = time.size, 4, 5
    doy = time.day_of_year.values
    ref = 0.25 + 0.08 * np.sin(2 * np.pi * doy / 365.25)[:, None, None] + 0.02 * rng.standard_normal(
        (nt, ny, nx))
    err = np.zeros(nt)
    for i in range(1, nt):  # strongly autocorrelated common error (rho = 0.8)
        err[i] = 0.8 * err[i - 1] + 0.006 * rng.standard_normal()
    prod = ref + err[:, None, None] + 0.02 * rng.standard_normal((nt, ny, nx))
    prod[time >= "2011-01-01"] += step
    coords = {"time": time, "y": np.arange(ny), "x": np.arange(nx)}
    return (xr.Dataset({"sm": (("time", "y", "x"), prod)}, coords=coords).chunk({"time": 100}),
            xr.Dataset({"sm": (("time", "y", "x"), ref)}, coords=coords))


def test_an_artificial_step_is_found_with_its_size():
    prod, ref = _fields(step=0.03)
    out = consistency_steps(prod, ref, ["2011-01-01"])
    row = out.iloc[0]
    assert row["step"] == pytest.approx(0.03, abs=0.006)
    assert row["significant"] and row["p_value"] < 1e-3
    assert row["n_eff_before"] < row["n_before"] / 3  # autocorrelation is accounted for
    mw = consistency_steps(prod, ref, ["2011-01-01"], test="mannwhitney").iloc[0]
    assert mw["significant"]


def test_no_step_is_not_significant_across_seeds():
    from scipy import stats

    corrected, plain = [], []
    c, w = pd.Timestamp("2011-01-01"), pd.Timedelta(days=365)
    for seed in range(12):
        prod, ref = _fields(step=0.0, seed=seed)
        corrected.append(consistency_steps(prod, ref, [c]).iloc[0]["p_value"])
        m = mean_difference(prod, ref).compute().to_series()
        before, after = m[(m.index >= c - w) & (m.index < c)], m[(m.index >= c) & (m.index < c + w)]
        plain.append(stats.ttest_ind(after, before, equal_var=False).pvalue)
    false_alarms = sum(p < 0.05 for p in corrected)
    # the AR(1) correction keeps false alarms rare; the plain Welch test cries wolf
    assert false_alarms <= 2
    assert sum(p < 0.05 for p in plain) >= false_alarms + 3


def test_mean_difference_is_lazy_and_windows_need_data():
    prod, ref = _fields(step=0.0)
    md = mean_difference(prod, ref)
    assert md.dims == ("time",) and hasattr(md.data, "dask")
    out = consistency_steps(prod, ref, ["2030-01-01"])
    assert out.iloc[0]["n_after"] == 0 and np.isnan(out.iloc[0]["p_value"])
    assert not out.iloc[0]["significant"]
    with pytest.raises(ValueError, match="test='ttest'"):
        consistency_steps(prod, ref, ["2011-01-01"], test="ttest")
    with pytest.raises(ValueError, match="no 'time' dimension"):
        consistency_steps(prod.isel(time=0), ref, ["2011-01-01"])
