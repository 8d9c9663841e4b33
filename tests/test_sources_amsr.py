"""AMSR-E NSIDC-0301 and AMSR2 CETB NSIDC-0630 adapters on files written in their layouts."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud import schema
from casm_cloud.grid import EASE2Grid
from casm_cloud.regrid import EASE1_GLOBAL, ease1_latlon
from casm_cloud.sources import get_adapter
from casm_cloud.sources.amsr import channel_name


def _tb(lat, lon, day, offset):
    return 240.0 + offset + 8.0 * np.sin(np.deg2rad(lat) * 3) + 4.0 * np.cos(np.deg2rad(lon)) + 0.1 * day


@pytest.fixture(scope="module")
def ease1_ll():
    g = EASE1_GLOBAL
    return ease1_latlon(np.arange(g["nrows"]), np.arange(g["ncols"]))


def _write_0301(folder, ease1_ll, year, doy, orbit, ff, pol, offset, seed=0):
    """One NSIDC-0301 ML file: little-endian uint16 tenths of K, 0 = no data, rows from north."""
    lat, lon = ease1_ll
    tb = _tb(lat, lon, doy, offset)
    raw = np.rint(tb * 10).astype("<u2")
    raw[~np.isfinite(lat)] = 0  # off-earth corners
    rng = np.random.default_rng(seed + doy)
    raw[rng.random(raw.shape) < 0.02] = 0  # gaps
    path = folder / f"ID2r3-AMSRE-ML{year}{doy:03d}{orbit}.v03.{ff}{pol}"
    raw.tofile(path)
    return path


def test_nsidc0301_flat_files_to_ease2(tmp_path, ease1_ll):
    for doy in (152, 153):
        for ff, pol, off in (("10", "V", 10.0), ("36", "H", -20.0)):
            _write_0301(tmp_path, ease1_ll, 2005, doy, "D", ff, pol, off)
    _write_0301(tmp_path, ease1_ll, 2005, 152, "A", "10", "V", 30.0)  # other orbit: ignored
    ds = get_adapter("amsre_nsidc0301")(str(tmp_path / "ID2r3-AMSRE-ML*"), region="demo")
    win = EASE2Grid("M25").window_by_name("demo")
    schema.validate(ds, "amsre", grid=win, values="all")
    assert sorted(ds.data_vars) == ["tb_10v", "tb_36h"]
    assert [str(t)[:10] for t in ds.time.values] == ["2005-06-01", "2005-06-02"]
    exp = _tb(win.lat[:, None], win.lon[None, :], 152, 10.0)
    got = ds.tb_10v.values[0]
    # tenths-of-K storage (0.05 K) plus bilinear error of a smooth field (< 1e-3 K)
    ok = np.isfinite(got)
    assert ok.mean() > 0.95
    np.testing.assert_allclose(got[ok], exp[ok], atol=0.06)
    only = get_adapter("amsre_nsidc0301")(str(tmp_path / "ID2r3-AMSRE-ML*"), region="tiny",
                                          orbit="A", channels=["tb_10v"])
    tiny = EASE2Grid("M25").window_by_name("tiny")
    got = only.tb_10v.values[0]
    ok = np.isfinite(got)
    np.testing.assert_allclose(got[ok], _tb(tiny.lat[:, None], tiny.lon[None, :], 152, 30.0)[ok],
                               atol=0.06)


def test_nsidc0301_store_on_ease1(tmp_path):
    """The simulator's form: a Zarr store on EASE-Grid v1 (time, row, col) with 2-D lat/lon."""
    rows, cols = np.arange(100, 135), np.arange(300, 340)
    lat, lon = ease1_latlon(rows, cols)
    t = pd.date_range("2010-07-01", periods=3)
    tb = np.stack([_tb(lat, lon, d, 5.0) for d in range(3)]).astype("float32")
    ds = xr.Dataset({"tb_18h": (("time", "row", "col"), tb, {"units": "K"})},
                    coords={"time": t, "row": rows, "col": cols, "lat": (("row", "col"), lat),
                            "lon": (("row", "col"), lon)})
    ds.to_zarr(tmp_path / "amsre_ease1.zarr", consolidated=False, zarr_format=3)
    out = get_adapter("amsre_nsidc0301")(str(tmp_path / "amsre_ease1.zarr"), region="demo",
                                         start="2010-07-02")
    win = EASE2Grid("M25").window_by_name("demo")
    assert out.sizes["time"] == 2
    np.testing.assert_allclose(out.tb_18h.values[0], _tb(win.lat[:, None], win.lon[None, :], 1, 5.0),
                               atol=2e-3)
    bad = ds.copy()
    bad["tb_18h"].attrs["units"] = "dK"
    bad.to_zarr(tmp_path / "bad.zarr", consolidated=False, zarr_format=3)
    with pytest.raises(schema.SchemaError, match="has units 'dK'"):
        get_adapter("amsre_nsidc0301")(str(tmp_path / "bad.zarr"), region="demo")


def _write_cetb(folder, block, pas, chan, day, offset, seed=0):
    """One CETB (NSIDC-0630) GRD T25km file: TB uint16, 0.01 K, _FillValue 0."""
    lat, lon = block.lat[:, None], block.lon[None, :]
    d = pd.Timestamp(day)
    tb = np.broadcast_to(_tb(lat, lon, d.day, offset), block.shape).copy()
    rng = np.random.default_rng(seed + d.day)
    tb[rng.random(tb.shape) < 0.1] = np.nan
    ds = xr.Dataset({"TB": (("time", "y", "x"), tb[None].astype("float32"),
                            {"units": "K", "long_name": "Brightness temperature"}),
                     "TB_num_samples": (("time", "y", "x"),
                                        rng.integers(1, 9, (1, *block.shape)).astype("uint8"))},
                    coords={"time": [d], "y": block.y, "x": block.x})
    enc = {"TB": {"dtype": "uint16", "scale_factor": 0.01, "_FillValue": np.uint16(0)}}
    name = f"NSIDC0630_GRD_EASE2_T25km_GCOMW1_AMSR2_{pas}_{chan}_{d:%Y%m%d}_v1.3.nc"
    ds.to_netcdf(folder / name, engine="h5netcdf", encoding=enc)
    return ds


def test_cetb_amsr2(tmp_path):
    block = EASE2Grid("M25").window(lat=(33.0, 42.0), lon=(-104.0, -92.0))
    raws = {}
    for day in ("2015-01-02", "2015-01-01"):
        for chan, off in (("10.7V", 10.0), ("89.0V", 25.0), ("7.3H", 0.0)):
            raws[(day, chan)] = _write_cetb(tmp_path, block, "D", chan, day, off)
    _write_cetb(tmp_path, block, "A", "10.7V", "2015-01-01", 50.0)
    ds = get_adapter("amsr2_cetb")(str(tmp_path / "NSIDC0630_*.nc"), region="demo")
    win = EASE2Grid("M25").window_by_name("demo")
    schema.validate(ds, "amsr2", grid=win, values="all")
    assert sorted(ds.data_vars) == ["tb_10v", "tb_89v"]  # 7.3 GHz is not a canonical channel
    raw = raws[("2015-01-01", "10.7V")].TB.isel(time=0)
    exp = raw.sel(y=win.y, x=win.x).values
    got = ds.tb_10v.values[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(exp))
    np.testing.assert_allclose(got, exp, atol=0.006)  # 0.01 K packing
    asc = get_adapter("amsr2_cetb")(str(tmp_path / "NSIDC0630_*.nc"), region="tiny", passes="A")
    assert list(asc.data_vars) == ["tb_10v"] and asc.sizes["time"] == 1
    with pytest.raises(schema.SchemaError, match="not AMSR channels"):
        get_adapter("amsr2_cetb")(str(tmp_path / "NSIDC0630_*.nc"), region="tiny", channels=["tb_7h"])


def test_channel_mapping():
    assert channel_name(6.925, "H") == "tb_06h" and channel_name(6.9, "V") == "tb_06v"
    assert channel_name(10.7, "V") == "tb_10v" and channel_name(89.0, "H") == "tb_89h"
    assert channel_name(7.3, "H") is None
