"""SMOS CATDS L3TB adapter on files written in the L3TB layout on the real CATDS grid."""

import numpy as np
import pytest
import xarray as xr

from casm_cloud import schema
from casm_cloud.grid import EASE2Grid
from casm_cloud.sources import get_adapter
from casm_cloud.sources.smos import ANGLE_CLASSES

SCALE = {"BT": (0.0061037018951994385, 200.0), "Pixel_Radiometric_Accuracy": (7.629627e-4, 25.0)}


@pytest.fixture(scope="module")
def catds_grid(real_data):
    """lat/lon of the real CATDS EASE2 25 km grid, cut to a box around the demo region."""
    g = xr.open_dataset(real_data / "smos" / "Grid_Point_Mask_USGS.nc")
    return g.lat.values, g.lon.values


def _tb(lat, lon, day, pol):
    base = 250.0 if pol == "V" else 220.0
    return base + 10 * np.cos(np.deg2rad(lat))[:, None] * np.sin(np.deg2rad(lon))[None, :] + day


def _write_l3tb(path, lat, lon, day, *, seed=0, units="K"):
    """One CATDS L3TB day in the product's layout: (inc, lat, lon), packed int16."""
    rng = np.random.default_rng(seed + day)
    shape = (len(ANGLE_CLASSES), lat.size, lon.size)
    data, enc = {}, {}
    for pol in ("H", "V", "3", "4"):
        tb = np.broadcast_to(_tb(lat, lon, day, pol) if pol in "HV" else 0.0 * _tb(lat, lon, 0, "H"),
                             shape).copy()
        tb += np.asarray(ANGLE_CLASSES)[:, None, None] * (0.5 if pol == "V" else -0.5)
        tb[rng.random(shape) < 0.1] = np.nan  # swath gaps
        data[f"BT_{pol}"] = (("inc", "lat", "lon"), tb.astype("float32"), {
            "units": units, "long_name": f"Angle class averaged Brightness temperature in {pol}-pol"})
        s, o = SCALE["BT"]
        enc[f"BT_{pol}"] = {"dtype": "int16", "scale_factor": s, "add_offset": o,
                            "_FillValue": np.int16(-32768)}
    for pol in ("H", "V"):
        acc = rng.uniform(2.0, 6.0, shape).astype("float32")
        data[f"Pixel_Radiometric_Accuracy_{pol}"] = (("inc", "lat", "lon"), acc, {"units": "K"})
        s, o = SCALE["Pixel_Radiometric_Accuracy"]
        enc[f"Pixel_Radiometric_Accuracy_{pol}"] = {"dtype": "int16", "scale_factor": s,
                                                    "add_offset": o, "_FillValue": np.int16(-32768)}
    nviews = rng.integers(5, 40, shape).astype("int16")
    rfi = np.where(rng.random(shape) < 0.15, rng.integers(1, 5, shape), 0).astype("int16")
    data["Nviews"] = (("inc", "lat", "lon"), nviews, {"units": "NA"})
    data["Nb_RFI_Flags"] = (("inc", "lat", "lon"), rfi, {"units": "NA"})
    data["X_Swath"] = (("lat", "lon"), rng.uniform(0, 6e5, shape[1:]).astype("float32"),
                       {"units": "m"})
    ds = xr.Dataset(data, coords={"inc": ("inc", np.asarray(ANGLE_CLASSES, "float32")),
                                  "lat": ("lat", lat.astype("float32")),
                                  "lon": ("lon", lon.astype("float32"))},
                    attrs={"institution": "SMOS CATDS Processing Chain"})
    ds.to_netcdf(path, engine="h5netcdf", encoding=enc)
    return ds


def _cut(catds_grid, win):
    lat, lon = catds_grid
    # the file is south-to-north: EASE2 row r is file row 583 - r
    rows = 583 - np.arange(win.row_slice.start, win.row_slice.stop)[::-1]
    return lat[rows], lon[win.col_slice]


def test_l3tb_42_5_with_rfi_and_window(tmp_path, catds_grid):
    box = EASE2Grid("M25").window(lat=(33.0, 42.0), lon=(-104.0, -92.0))
    lat, lon = _cut(catds_grid, box)
    files = []
    for day in (11, 10):
        p = tmp_path / f"SM_RE07_MIR_CDF3TA_201606{day}T000000_201606{day}T235959_330_001_7.DBL.nc"
        files.append((day, _write_l3tb(p, lat, lon, day), p))
    ds = get_adapter("smos_l3tb")(str(tmp_path / "SM_RE07_MIR_CDF3TA_*.DBL.nc"), region="demo")
    win = EASE2Grid("M25").window_by_name("demo")
    schema.validate(ds, "smos", grid=win, values="all")
    assert [str(t)[:10] for t in ds.time.values] == ["2016-06-10", "2016-06-11"]
    assert ds.tb_h.chunks is not None
    k = ANGLE_CLASSES.index(42.5)
    raw = files[1][1]  # day 10
    # expected: the 42.5 class, RFI-free views only, flipped to north-south, cut to the window
    exp = raw.BT_V.isel(inc=k).where(raw.Nb_RFI_Flags.isel(inc=k) == 0).values[::-1]
    r0 = win.row_slice.start - box.row_slice.start
    c0 = win.col_slice.start - box.col_slice.start
    exp = exp[r0:r0 + win.shape[0], c0:c0 + win.shape[1]]
    got = ds.tb_v.isel(time=0).values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(exp))
    np.testing.assert_allclose(got, exp, atol=0.0062)  # one packing step of BT (0.0061 K)
    # the analytic field at the EASE2 centres (checks lat flip and placement)
    ana = _tb(win.lat, win.lon, 10, "V") + 42.5 * 0.5
    ok = np.isfinite(got)
    np.testing.assert_allclose(got[ok], ana[ok], atol=0.01)
    # RFI filtering removed something, and switching it off keeps more
    allv = get_adapter("smos_l3tb")([str(f[2]) for f in files], region="demo", max_rfi_fraction=None)
    assert np.isfinite(allv.tb_v.values).sum() > np.isfinite(ds.tb_v.values).sum()


def test_l3tb_other_angle_accuracy_and_regrid(tmp_path, catds_grid):
    box = EASE2Grid("M25").window(lat=(33.0, 42.0), lon=(-104.0, -92.0))
    lat, lon = _cut(catds_grid, box)
    p = tmp_path / "SM_RE07_MIR_CDF3TD_20160610T000000_20160610T235959_330_001_7.DBL.nc"
    raw = _write_l3tb(p, lat, lon, 0)
    ds = get_adapter("smos_l3tb")(str(p), angle=52.5, max_rfi_fraction=None, max_accuracy=4.0)
    assert ds.attrs["ease2_grid"] == "M25" and ds.tb_h.shape[1:] == box.shape
    k = ANGLE_CLASSES.index(52.5)
    acc = raw.Pixel_Radiometric_Accuracy_H.isel(inc=k).values[::-1]
    got = ds.tb_h.values[0]
    assert np.isnan(got[acc > 4.0 + 1e-3]).all() and np.isfinite(got[acc < 4.0 - 1e-3]).mean() > 0.8
    m36 = get_adapter("smos_l3tb")(str(p), grid="M36", region="tiny", max_rfi_fraction=None)
    schema.validate(m36, "smos", grid=EASE2Grid("M36").window_by_name("tiny"))
    with pytest.raises(FileNotFoundError, match="no A"):
        get_adapter("smos_l3tb")(str(p), orbit="A")


def test_l3tb_errors(tmp_path, catds_grid):
    box = EASE2Grid("M25").window_by_name("tiny")
    lat, lon = _cut(catds_grid, box)
    p = tmp_path / "SM_RE07_MIR_CDF3TA_20160610T000000_20160610T235959_330_001_7.DBL.nc"
    _write_l3tb(p, lat, lon, 0, units="degC")
    with pytest.raises(schema.SchemaError, match="'BT_H' has units 'degC'"):
        get_adapter("smos_l3tb")(str(p))
    q = tmp_path / "SM_RE07_MIR_CDF3TA_20160611T000000_20160611T235959_330_001_7.DBL.nc"
    _write_l3tb(q, lat + 0.05, lon, 0)
    with pytest.raises(schema.SchemaError, match="not EASE2 M25 cell centres"):
        get_adapter("smos_l3tb")(str(q))
    _write_l3tb(q, lat, lon, 0)
    with pytest.raises(schema.SchemaError, match="no incidence-angle class 41"):
        get_adapter("smos_l3tb")(str(q), angle=41.0)
    (tmp_path / "renamed.nc").write_bytes(q.read_bytes())
    with pytest.raises(schema.SchemaError, match="file name does not follow"):
        get_adapter("smos_l3tb")(str(tmp_path / "renamed.nc"))
    with pytest.raises(schema.SchemaError, match="the files cover"):
        get_adapter("smos_l3tb")(str(q), region="demo")
