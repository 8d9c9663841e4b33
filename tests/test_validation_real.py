"""The real Hawaii set: SMAP L3 and SMOS L3 time series against ISMN, checked with pytesmo."""

from __future__ import annotations

import numpy as np
import pytest
from pytesmo import metrics as pm
from pytesmo.time_series.filtering import moving_average

from casm_cloud.sources.tuw_ts import open_tuw_ts
from casm_cloud.validation import matched_pairs, score_pairs, select_stations
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
            "bias": pm.bias(a, b), "NRMSE": pm.nrmsd(a, b),
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
