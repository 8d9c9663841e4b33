import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud import storage


def _template(n_time=6, ny=4, nx=5):
    data = da.zeros((n_time, ny, nx), chunks=(2, ny, nx), dtype="float32")
    return xr.Dataset(
        {"sm": (("time", "y", "x"), data, {"units": "m3 m-3"})},
        coords={"time": pd.date_range("2020-01-01", periods=n_time), "y": np.arange(ny)[::-1] * 1.0,
                "x": np.arange(nx) * 1.0},
        attrs={"title": "t"},
    )


def test_template_regions_record_and_completion(tmp_path):
    url = str(tmp_path / "out.zarr")
    tpl = _template()
    storage.write_template(tpl, url, config_hash="abc")
    st = storage.store_state(url)
    assert st == {"exists": True, "complete": False, "config_hash": "abc"}
    with pytest.raises(storage.StoreError, match="unfinished"):
        storage.open_zarr(url, require_complete=True)

    rec = storage.ChunkRecord(url)
    assert rec.done() == set()
    for k in range(3):
        part = tpl.isel(time=slice(2 * k, 2 * k + 2)).compute() + k + 1
        storage.write_region(part, url, region={"time": slice(2 * k, 2 * k + 2)})
        rec.mark({"time": k}, {"n": 1})
    assert rec.done() == {"time0", "time1", "time2"} and rec.is_done({"time": 1})
    storage.mark_complete(url, config_hash="abc")
    out = storage.open_zarr(url, require_complete=True)
    # the record prefix is invisible to Zarr/xarray
    assert set(out.data_vars) == {"sm"}
    np.testing.assert_array_equal(out.sm.values[:, 0, 0], [1, 1, 2, 2, 3, 3])
    assert storage.store_state(url)["complete"]


def test_template_writes_lazy_coordinates(tmp_path):
    """lat/lon opened lazily from a stage's store end up in the template, not as NaN."""
    url = str(tmp_path / "lazy.zarr")
    tpl = _template()
    lat = xr.DataArray(da.from_array(np.linspace(40.0, 39.0, 4), chunks=2), dims="y")
    storage.write_template(tpl.assign_coords(lat=lat), url)
    np.testing.assert_array_equal(xr.open_zarr(url)["lat"].values, np.linspace(40.0, 39.0, 4))


def test_rewriting_template_resets_completion(tmp_path):
    url = str(tmp_path / "a.zarr")
    storage.write_template(_template(), url)
    storage.mark_complete(url)
    storage.write_template(_template(), url, config_hash="new")
    assert storage.store_state(url) == {"exists": True, "complete": False, "config_hash": "new"}


def test_missing_store_is_clear(tmp_path):
    with pytest.raises(storage.StoreError, match="no Zarr store at"):
        storage.open_zarr(str(tmp_path / "nope.zarr"))
    assert storage.store_state(str(tmp_path / "nope.zarr"))["exists"] is False


def test_join_urls():
    assert storage.join("gs://bucket/root/", "stage", "x.zarr") == "gs://bucket/root/stage/x.zarr"
    assert storage.join("/tmp/a", "b") == "/tmp/a/b"


def test_memory_filesystem_roundtrip():
    url = "memory://casm-test/out.zarr"
    tpl = _template()
    storage.write_template(tpl, url)
    storage.write_region(tpl.isel(time=slice(0, 2)).compute() + 5, url, region={"time": slice(0, 2)})
    storage.ChunkRecord(url).mark((0,))
    storage.mark_complete(url)
    out = storage.open_zarr(url, require_complete=True)
    assert float(out.sm[0, 0, 0]) == 5.0
    assert storage.ChunkRecord(url).done() == {"0"}
    storage.remove(url)


def test_write_dataset_replaces_and_marks_complete(tmp_path):
    url = str(tmp_path / "whole.zarr")
    (tmp_path / "whole.zarr").mkdir()
    (tmp_path / "whole.zarr" / "stale").write_text("old")
    ds = _template().chunk({"time": 3}) + 2.0
    ds["sm"].encoding = {"chunks": (1, 1, 1), "dtype": "float64"}  # as read from elsewhere
    storage.write_dataset(ds, url, config_hash="h1")
    assert not (tmp_path / "whole.zarr" / "stale").exists()
    assert storage.store_state(url) == {"exists": True, "complete": True, "config_hash": "h1"}
    out = storage.open_zarr(url, require_complete=True)
    assert out.sm.dtype == np.float32 and out.sm.encoding["chunks"] == (3, 4, 5)
    np.testing.assert_array_equal(out.sm.values, np.full((6, 4, 5), 2.0, np.float32))


def test_region_writes_are_lazy_until_computed(tmp_path):
    import dask

    url = str(tmp_path / "lazy.zarr")
    tpl = _template() + 7.0
    storage.write_template(tpl, url)
    write = storage.region_writes(tpl, url)
    assert np.isnan(xr.open_zarr(url, consolidated=False).sm.values).all()
    dask.compute(write)
    np.testing.assert_array_equal(xr.open_zarr(url, consolidated=False).sm.values, 7.0)


def test_append_time_grows_and_rewrites_a_killed_append(tmp_path):
    url = str(tmp_path / "grow.zarr")
    full = (_template(n_time=9) + xr.DataArray(np.arange(9.0), dims="time")).astype("float32")
    full = full.assign_coords(lat=("y", np.linspace(40.0, 39.0, 4)))
    storage.write_template(full.isel(time=slice(0, 5)), url, config_hash="h")
    storage.write_region(full.isel(time=slice(0, 5)).compute(), url,
                         region={"time": slice(0, 5)})
    storage.mark_complete(url)
    # Steps 3-4 again (a killed append grew the axis), then 5-8 new.
    assert storage.append_time(full.isel(time=slice(3, 9)), url) == 4
    out = storage.open_zarr(url, require_complete=True)
    np.testing.assert_array_equal(out.sm.values[:, 0, 0], np.arange(9.0))
    np.testing.assert_array_equal(out["time"].values, full["time"].values)
    assert out.attrs["title"] == "t" and out.attrs[storage.HASH_ATTR] == "h"
    assert out.sm.encoding["chunks"] == (2, 4, 5)
    assert storage.append_time(full.isel(time=slice(0, 0)), url) == 0
    with pytest.raises(storage.StoreError, match="do not continue"):
        storage.append_time(full.isel(time=[2, 4]), url)


def test_grow_time_template_grows_the_axis_only(tmp_path):
    url = str(tmp_path / "tpl.zarr")
    tpl = _template(n_time=4)
    storage.write_template(tpl, url, config_hash="h")
    storage.write_region(tpl.compute() + 1, url, region={"time": slice(0, 4)})
    storage.mark_complete(url)
    more = _template(n_time=7).isel(time=slice(4, None)).chunk({"time": 3})  # off the chunks
    storage.grow_time(more, url, attrs={"title": "t", "extra": 1}, compute=False)
    assert storage.store_state(url) == {"exists": True, "complete": False, "config_hash": None}
    out = storage.open_zarr(url)
    assert out.sizes["time"] == 7 and out.attrs["extra"] == 1
    np.testing.assert_array_equal(out.sm.values[:4], 1.0)
    assert np.isnan(out.sm.values[4:]).all()  # left to region writes
