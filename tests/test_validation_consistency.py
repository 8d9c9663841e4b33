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
    doy = time.dayofyear.values
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
    p_values = [consistency_steps(*_fields(step=0.0, seed=s), ["2011-01-01"]).iloc[0]["p_value"]
                for s in range(12)]
    # with the AR(1) correction the false-alarm rate stays near alpha = 5 %
    assert sum(p < 0.05 for p in p_values) <= 2


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
