"""Real pairs checked with pytesmo: the Hawaii set (SMAP L3 and SMOS L3 time series against
ISMN) and the ISMN-ASCAT pair of pytesmo's own tests (the anomaly R rule)."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from pytesmo import metrics as pm
from pytesmo.time_series.filtering import moving_average

from casm_cloud.sources.tuw_ts import open_tuw_ts
from casm_cloud.validation import matched_pairs, score_pairs, select_stations
from casm_cloud.validation import metrics as vm
from casm_cloud.validation.stations import read_ismn

PRODUCTS = {
    "SMAP_L3": ("SMAP_L3/SMAP_V9_AM_PM/netcdf", "soil_moisture"),
    "SMOS_L3": ("SMOS_L3/SMOSL3_v339_ASC", "Soil_Moisture"),
}


@pytest.fixture(scope="module")
def hawaii_stations(real_data, tmp_path_factory):
    ds = read_ismn(real_data / "qa4sm_hawaii" / "ISMN_V20250617",
                   meta_path=tmp_path_factory.mktemp("ismn-meta"))
    return select_stations(ds)


def _pytesmo_row(x, y, x_all, y_all):
    # anomalies of each series on its own (the papers' rule), then paired
    ax = (x_all - moving_average(x_all.dropna(), window_size=35, min_obs=10)).reindex(x.index)
    ay = (y_all - moving_average(y_all.dropna(), window_size=35, min_obs=10)).reindex(y.index)
    ok = ax.notna() & ay.notna()
    a, b = x.values, y.values
    return {"R": pm.pearson_r(a, b), "RMSE": pm.rmsd(a, b), "ubRMSE": pm.ubrmsd(a, b),
            "bias": pm.bias(a, b), "NRMSD": pm.nrmsd(a, b),
            "NRMSE": pm.rmsd(a, b) / b.mean(), "rel_bias": pm.bias(a, b) / b.mean(),
            "anomaly_R": pm.pearson_r(ax[ok].values, ay[ok].values),
            "R2": pm.nash_sutcliffe(b, a)}


@pytest.mark.parametrize("name", list(PRODUCTS))
def test_hawaii_metrics_equal_pytesmo_on_the_same_pairs(real_data, hawaii_stations, name):
    sub, var = PRODUCTS[name]
    product = open_tuw_ts(str(real_data / "qa4sm_hawaii" / sub), variables=[var])
    pairs, matches = matched_pairs(product, hawaii_stations, variable=var)
    table = score_pairs(pairs, matches, name=name).set_index("station")
    assert matches["matched"].all()
    checked = 0
    for sid in table.index:
        p = pairs.sel(station=sid)
        x = p["product"].to_series().astype(np.float64)
        y = p["reference"].to_series().astype(np.float64)
        ok = x.notna() & y.notna()
        assert table.loc[sid, "n"] == ok.sum()
        if ok.sum() < 10:
            assert np.isnan(table.loc[sid, "R"])
            continue
        expected = _pytesmo_row(x[ok], y[ok], x, y)
        for col, value in expected.items():
            assert table.loc[sid, col] == pytest.approx(value, abs=1e-6), (sid, col)
        checked += 1
    assert checked >= 2  # SMAP: 3 stations, SMOS: 2 (Kainaliu's nearest SMOS cell is empty)


def test_hawaii_smap_is_a_plausible_validation(real_data, hawaii_stations):
    """Sanity on the real numbers: SilverSword correlates well with SMAP L3 (R > 0.6)."""
    sub, var = PRODUCTS["SMAP_L3"]
    product = open_tuw_ts(str(real_data / "qa4sm_hawaii" / sub), variables=[var])
    pairs, matches = matched_pairs(product, hawaii_stations, variable=var)
    table = score_pairs(pairs, matches, name="SMAP_L3").set_index("station_name")
    assert table.loc["SilverSword", "R"] > 0.6
    assert (table["n"] > 500).all()
    assert (table["ubRMSE"] < 0.1).all()
    assert (matches["distance_km"] < 25.5).all()  # within a 36 km cell's half-diagonal


# ---- the ISMN-ASCAT pair of pytesmo's tests: which anomaly rule gives which R ----------------
@pytest.fixture(scope="module")
def ismn_ascat_daily(real_data):
    """Daily means of the G-flagged hourly ISMN series (2017) and of ASCAT (2007-2017)."""
    folder = real_data / "validation"
    if not ((folder / "ISMN.csv").is_file() and (folder / "ASCAT.csv").is_file()):
        pytest.skip(f"{folder}/ISMN.csv and ASCAT.csv (pytesmo's test pair) are absent")
    ismn = pd.read_csv(folder / "ISMN.csv", index_col=0, parse_dates=True)
    ascat = pd.read_csv(folder / "ASCAT.csv", index_col=0, parse_dates=True)
    good = ismn["soil_moisture"].where(ismn["soil_moisture_flag"] == "G")
    return (ascat["sm"].dropna().resample("D").mean().dropna(),
            good.dropna().resample("D").mean().dropna())


def _pytesmo_anomaly_adapter_r(product: pd.Series, reference: pd.Series) -> tuple[float, int]:
    """R from pytesmo's validation framework: AnomalyAdapter readers, matched in time, R."""
    from pytesmo.validation_framework.adapters import AnomalyAdapter
    from pytesmo.validation_framework.metric_calculators import PairwiseIntercomparisonMetrics
    from pytesmo.validation_framework.temporal_matchers import make_combined_temporal_matcher
    from pytesmo.validation_framework.validation import Validation

    grid = types.SimpleNamespace(find_nearest_gpi=lambda *_, **__: (0, 0))
    datasets = {}
    for name, series in (("ISMN", reference), ("ASCAT", product)):
        frame = series.to_frame("sm")
        reader = types.SimpleNamespace(read=lambda *_, f=frame, **__: f.copy(), grid=grid)
        datasets[name] = {"class": AnomalyAdapter(reader), "columns": ["sm"]}
    val = Validation(datasets, "ISMN", scaling=None,
                     temporal_matcher=make_combined_temporal_matcher(pd.Timedelta(12, "h")),
                     metrics_calculators={(2, 2): PairwiseIntercomparisonMetrics().calc_metrics})
    (result,) = val.calc(0, 1, 1, rename_cols=False, only_with_reference=True).values()
    return float(result["R"][0]), int(result["n_obs"][0])


def _da(s: pd.Series) -> xr.DataArray:
    return xr.DataArray(s.values, dims="time", coords={"time": s.index.values})


def test_anomaly_r_on_the_real_ismn_ascat_pair_is_pytesmos_anomaly_adapter(ismn_ascat_daily):
    """The default rule (each series' anomalies from its own whole record, then paired) is
    pytesmo's AnomalyAdapter: 0.300 on this pair.  Cutting both series to their common span
    first gives 0.313; anomalies of the paired days (``pair_first``) give 0.307."""
    ascat, ismn = ismn_ascat_daily
    assert ascat.index[0].year == 2007 and ismn.index[0].year == 2017  # ASCAT: 11 years

    expected, n = _pytesmo_anomaly_adapter_r(ascat, ismn)
    assert n == 188
    got = float(vm.anomaly_r(_da(ascat), _da(ismn)))
    assert got == pytest.approx(expected, abs=1e-6)
    assert round(got, 3) == 0.300
    # the papers' min count (>= 10 values in the window, pytesmo's moving_average directly;
    # the adapter takes >= 1) changes nothing here
    aa = (ascat - moving_average(ascat, window_size=35, min_obs=10))
    ai = (ismn - moving_average(ismn, window_size=35, min_obs=10))
    ok = aa.reindex(ai.index).notna() & ai.notna()
    assert got == pytest.approx(pm.pearson_r(aa.reindex(ai.index)[ok].values, ai[ok].values),
                                abs=1e-9)

    # both cut to the common span (2017-01-01 .. 2017-12-29) before the anomalies: 0.313
    t0, t1 = max(ascat.index[0], ismn.index[0]), min(ascat.index[-1], ismn.index[-1])
    cut = [s.loc[t0:t1] for s in (ascat, ismn)]
    common = float(vm.anomaly_r(*map(_da, cut)))
    assert common == pytest.approx(_pytesmo_anomaly_adapter_r(*cut)[0], abs=1e-6)
    assert round(common, 3) == 0.313

    # anomalies of the 188 paired days: 0.307
    pairs = pd.concat({"a": ascat, "i": ismn}, axis=1, sort=True).dropna()
    pa = pairs["a"] - moving_average(pairs["a"], window_size=35, min_obs=10)
    pi = pairs["i"] - moving_average(pairs["i"], window_size=35, min_obs=10)
    paired = float(vm.anomaly_r(_da(ascat), _da(ismn), pair_first=True))
    assert paired == pytest.approx(pm.pearson_r(pa.values, pi.values), abs=1e-9)
    assert round(paired, 3) == 0.307
