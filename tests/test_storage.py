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
