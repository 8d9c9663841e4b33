"""SMAP L3 adapter: the real Harmony subset, and granules written in the SPL3SMP layout."""

import h5py
import numpy as np
import pytest

from casm_cloud import schema
from casm_cloud.grid import EASE2Grid, GridWindow
from casm_cloud.sources import get_adapter
from casm_cloud.sources.smap import smap_granule_window

FILL = np.float32(-9999.0)


def _sm_field(win, day):
    """Expected soil moisture of a window (analytic in lat/lon, shifts by day)."""
    lat, lon = np.meshgrid(win.lat, win.lon, indexing="ij")
    return (0.25 + 0.1 * np.sin(np.deg2rad(lat) * 5) * np.cos(np.deg2rad(lon) * 3)
            + 0.01 * day).astype(np.float32)


def _write_granule(path, win, day, *, seed=0, index=True, units="cm**3/cm**3"):
    """One daily granule in the SPL3SMP(_E) group layout (Product Specification v8/v9)."""
    rng = np.random.default_rng(seed + day)
    lat, lon = np.meshgrid(win.lat, win.lon, indexing="ij")
    rows, cols = np.meshgrid(np.arange(win.row_slice.start, win.row_slice.stop),
                             np.arange(win.col_slice.start, win.col_slice.stop), indexing="ij")
    with h5py.File(path, "w") as f:
        for group, suf, off in (("Soil_Moisture_Retrieval_Data_AM", "", 0.0),
                                ("Soil_Moisture_Retrieval_Data_PM", "_pm", 0.02)):
            g = f.create_group(group)
            sm = _sm_field(win, day) + np.float32(off)
            water = rng.random(win.shape) < 0.1
            flag = np.where(rng.random(win.shape) < 0.2, 1, 0).astype(np.uint16)  # bit 0
            flag[rng.random(win.shape) < 0.05] |= 0b110  # not successful
            sm[water] = FILL
            d = g.create_dataset(f"soil_moisture{suf}", data=sm)
            d.attrs.update({"_FillValue": np.array([FILL]), "units": np.bytes_(units),
                            "valid_min": np.array([0.02], np.float32),
                            "valid_max": np.array([0.5], np.float32)})
            q = g.create_dataset(f"retrieval_qual_flag{suf}", data=flag)
            q.attrs["_FillValue"] = np.array([65534], np.uint16)
            for name, arr in ((f"latitude{suf}", lat), (f"longitude{suf}", lon)):
                a = arr.astype(np.float32)
                a[water] = FILL
                g.create_dataset(name, data=a).attrs["_FillValue"] = np.array([FILL])
            if index:
                for name, arr in ((f"EASE_row_index{suf}", rows), (f"EASE_column_index{suf}", cols)):
                    a = arr.astype(np.uint16)
                    a[water] = 65534
                    g.create_dataset(name, data=a).attrs["_FillValue"] = np.array([65534], np.uint16)
        f.create_group("Metadata")
    return path


def _expected(path, win_file, win, orbit_suffix, quality_mask):
    with h5py.File(path) as f:
        g = f["Soil_Moisture_Retrieval_Data_" + ("PM" if orbit_suffix else "AM")]
        sm = g["soil_moisture" + orbit_suffix][()]
        flag = g["retrieval_qual_flag" + orbit_suffix][()]
    r = slice(win.row_slice.start - win_file.row_slice.start,
              win.row_slice.stop - win_file.row_slice.start)
    c = slice(win.col_slice.start - win_file.col_slice.start,
              win.col_slice.stop - win_file.col_slice.start)
    sm, flag = sm[r, c].astype(np.float64), flag[r, c]
    sm[(sm == FILL) | ((flag & quality_mask) != 0)] = np.nan
    return sm


def test_real_harmony_subset_geometry_and_missing_sm(real_data):
    path = str(real_data / "smap" / "SC_SPL3SMP_subsetted_without_maskfill.nc4")
    win = smap_granule_window(path)
    assert win == GridWindow("M36", slice(0, 27), slice(294, 456))
    with h5py.File(path) as f:
        lat = f["Soil_Moisture_Retrieval_Data_AM/latitude"][:, 0]
    np.testing.assert_allclose(lat[lat > -9999], win.lat[lat > -9999], atol=1e-3)
    with pytest.raises(schema.SchemaError,
                       match="missing variable Soil_Moisture_Retrieval_Data_AM/soil_moisture"):
        get_adapter("smap_l3")(path)


@pytest.mark.filterwarnings("ignore:Mean of empty slice")
def test_spl3smp_global_granules(tmp_path):
    full = EASE2Grid("M36").subwindow(slice(0, 406), slice(0, 964))
    paths = [_write_granule(tmp_path / f"SMAP_L3_SM_P_2016060{d}_R16010_001.h5", full, d)
             for d in (2, 1)]  # unsorted on purpose
    ds = get_adapter("smap_l3")(str(tmp_path / "SMAP_L3_SM_P_*.h5"), region="demo")
    win = EASE2Grid("M36").window_by_name("demo")
    schema.validate(ds, "smap", grid=win, values="all")
    assert [str(t)[:10] for t in ds.time.values] == ["2016-06-01", "2016-06-02"]
    assert ds.sm.data.chunks[0] == (2,)  # granules read FILES_PER_TASK (32) to a task
    am = ds.sm.values
    for k, p in enumerate(sorted(paths)):
        np.testing.assert_array_equal(am[k], _expected(p, full, win, "", 0b001).astype(np.float32))
    assert np.isnan(am).any() and np.isfinite(am).mean() > 0.5
    # PM and both orbits; "all" keeps flagged retrievals
    pm = get_adapter("smap_l3")([str(p) for p in paths], region="demo", orbit="pm", quality="all")
    np.testing.assert_array_equal(pm.sm.values[0], _expected(sorted(paths)[0], full, win, "_pm", 0))
    both = get_adapter("smap_l3")([str(p) for p in paths], region="demo", orbit="both",
                                  quality="all").sm.values
    a = _expected(sorted(paths)[0], full, win, "", 0)
    b = _expected(sorted(paths)[0], full, win, "_pm", 0)
    np.testing.assert_allclose(both[0], np.nanmean(np.stack([a, b]), 0), atol=1e-7)


@pytest.mark.filterwarnings("ignore:Mean of empty slice")
def test_spl3smp_e_subset_without_indices_and_regrid(tmp_path):
    """A 9 km Harmony-style subset: placed from lat/lon alone; then regridded to M25."""
    block = EASE2Grid("M09").window(lat=(36.0, 39.5), lon=(-100.0, -96.0))
    p = _write_granule(tmp_path / "SMAP_L3_SM_P_E_20170401_R16010_001.h5", block, 0, index=False)
    assert smap_granule_window(str(p)) == block
    native = get_adapter("smap_l3")(str(p), quality="succeeded")
    assert native.attrs["ease2_grid"] == "M09" and native.sm.shape[1:] == block.shape
    np.testing.assert_array_equal(native.sm.values[0], _expected(p, block, block, "", 0b100))
    m25 = get_adapter("smap_l3")(str(p), grid="M25", region="tiny", quality="all")
    win = EASE2Grid("M25").window_by_name("tiny")
    schema.validate(m25, "smap", grid=win, values="all")
    # bilinear of a smooth field: within 2e-3 m3 m-3 of the analytic value where valid
    exp = _sm_field(win, 0)
    got = m25.sm.values[0]
    ok = np.isfinite(got)
    assert ok.mean() > 0.8
    np.testing.assert_allclose(got[ok], exp[ok], atol=2e-3)
    with pytest.raises(schema.SchemaError, match="the granules cover"):
        get_adapter("smap_l3")(str(p), region="demo")


def test_wrong_units_and_bad_options(tmp_path):
    block = EASE2Grid("M36").window_by_name("tiny")
    p = _write_granule(tmp_path / "SMAP_L3_SM_P_20160601_R1_001.h5", block, 0, units="percent")
    with pytest.raises(schema.SchemaError, match="has units 'percent'; expected 'm3 m-3'"):
        get_adapter("smap_l3")(str(p))
    with pytest.raises(ValueError, match="orbit 'noon'"):
        get_adapter("smap_l3")(str(p), orbit="noon")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        get_adapter("smap_l3")(str(tmp_path / "nothing_*.h5"))
