import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud.grid import EASE2Grid
from casm_cloud.merge import SOURCE_CODES, merge_eras, to_casm_layout

WIN = EASE2Grid("M36").window(lat=(35, 38), lon=(-100, -97))
VARS = ("sm", "sm_residual", "seasonal_cycle", "structural_uncertainty", "data_uncertainty")


def _era(start, n, value):
    times = pd.date_range(start, periods=n, freq="3D")
    shape = (n, *WIN.shape)
    ds = xr.Dataset({v: (("time", "y", "x"), np.full(shape, value, "float32"),
                         {"units": "m3 m-3"}) for v in VARS},
                    coords={"time": times, **WIN.coords()}, attrs=WIN.identity())
    return ds.chunk({"time": 2})


def test_overlap_is_the_mean_and_source_says_who():
    a = _era("2010-01-01", 6, 0.2)   # AMSR-E era
    s = _era("2010-01-10", 6, 0.3)   # SMOS era, overlaps 3 bins
    s["sm"][0, 0, 0] = np.nan        # a gap in SMOS inside the overlap
    out = merge_eras({"nn_amsre": a, "nn_smos": s})
    assert out.sizes["time"] == 9
    sm = out.sm.values
    src = out.source.values
    assert np.allclose(sm[:3], 0.2) and (src[:3] == SOURCE_CODES["nn_amsre"]).all()
    assert np.allclose(sm[4:6], 0.25) and (src[4:6] == 3).all()
    assert sm[3, 0, 0] == pytest.approx(0.2) and src[3, 0, 0] == 1   # SMOS gap
    assert np.allclose(sm[6:], 0.3) and (src[6:] == SOURCE_CODES["nn_smos"]).all()
    assert "flag_meanings" in out.source.attrs


def test_merge_is_lazy_and_checks_inputs():
    out = merge_eras({"nn_smos": _era("2015-01-01", 4, 0.1)})
    assert out.sm.chunks is not None
    with pytest.raises(ValueError, match="expected eras"):
        merge_eras({"nn_amsr2": _era("2015-01-01", 4, 0.1)})


def test_casm_layout():
    out = to_casm_layout(merge_eras({"nn_smos": _era("2015-01-01", 4, 0.1)}))
    assert set(out.data_vars) == {"CASM_soil_moisture", "seasonal_cycle",
                                  "structural_uncertainty", "data_uncertainty"}
    assert out.CASM_soil_moisture.dims == ("date", "lat", "lon")
    np.testing.assert_allclose(out.lat.values, WIN.lat)
    np.testing.assert_allclose(out.lon.values, WIN.lon)
