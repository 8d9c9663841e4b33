import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from fsspec.implementations.memory import MemoryFileSystem

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
    np.testing.assert_array_equal(xr.open_zarr(url, consolidated=False)["lat"].values,
                                  np.linspace(40.0, 39.0, 4))


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


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_plain_store_is_written_as_given_and_grows_along_time(tmp_path, where):
    """A provider's layout (the simulated ARCO-ERA5): no completion mark, no encoding of ours,
    consolidated when asked; an append grows it."""
    import warnings

    root = str(tmp_path) if where == "local" else "memory://casm-test/plain"
    url = storage.join(root, "arco.zarr")
    full = _template(n_time=6).astype("float32")
    enc = {"sm": {"chunks": (1, 4, 5)}}
    storage.write_plain_zarr(full.isel(time=slice(0, 4)), url, encoding=enc, consolidated=True)
    storage.write_plain_zarr(full.isel(time=slice(4, 6)), url, append_dim="time",
                             consolidated=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(url)
    assert ds.sizes["time"] == 6 and ds.sm.encoding["chunks"] == (1, 4, 5)
    assert storage.COMPLETE_ATTR not in ds.attrs and ds.attrs == {"title": "t"}
    np.testing.assert_array_equal(ds.sm.values, full.sm.values)
    storage.write_bytes(storage.join(root, "sub", "f.bin"), b"abc")  # its folder made
    assert storage.read_text(storage.join(root, "sub", "f.bin")) == "abc"
    if where == "memory":
        storage.remove(root)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_finished_store_opens_with_plain_xarray_without_a_warning(tmp_path, where):
    """Consolidated once complete; an append drops the copy until it is complete again."""
    import warnings

    url = str(tmp_path / "plain.zarr") if where == "local" else "memory://casm-test/plain.zarr"
    full = _template(n_time=8).astype("float32") + 1.0
    storage.write_dataset(full.isel(time=slice(0, 4)), url, config_hash="h")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(url)
        assert ds.attrs[storage.COMPLETE_ATTR] and ds.sizes["time"] == 4
    # Marked unfinished (an append under way): no consolidated copy to read stale shapes from.
    storage.zarr_group(url).attrs[storage.COMPLETE_ATTR] = False
    with pytest.raises(ValueError, match="[Cc]onsolidated"):
        xr.open_zarr(url, consolidated=True)
    storage.mark_complete(url)
    assert storage.append_time(full.isel(time=slice(4, 8)).chunk({"time": 2}), url) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(url)
        assert ds.sizes["time"] == 8 and ds.attrs[storage.HASH_ATTR] == "h"
        np.testing.assert_array_equal(ds.sm.values, full.sm.values)
    if where == "memory":
        storage.remove(url)


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


# --------------------------------------------------------------------------- a store that fails
class _Flaky(MemoryFileSystem):
    """An in-memory file system whose server can go away: ``_Flaky.down = ConnectionResetError(..)``
    makes every read, write, listing and deletion raise that error."""

    protocol = "flaky"
    store: dict = {}
    pseudo_dirs = [""]
    down: BaseException | None = None

    def _check(self):
        if type(self).down is not None:
            raise type(self).down

    def info(self, path, **kwargs):
        self._check()
        return super().info(path, **kwargs)

    def exists(self, path, **kwargs):  # fsspec's own says False for any error; gcsfs' raises
        self._check()
        return super().exists(path, **kwargs)

    def ls(self, path, detail=True, **kwargs):
        self._check()
        return super().ls(path, detail=detail, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        self._check()
        return super().cat_file(path, start=start, end=end, **kwargs)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        self._check()
        return super().pipe_file(path, value, mode=mode, **kwargs)

    def rm_file(self, path):
        self._check()
        return super().rm_file(path)


@pytest.fixture
def flaky():
    import fsspec

    fsspec.register_implementation("flaky", _Flaky, clobber=True)
    _Flaky.store.clear()
    _Flaky.down = None
    yield "flaky://bucket/out.zarr"
    _Flaky.down = None
    _Flaky.store.clear()


def test_a_store_that_goes_away_raises_one_line_naming_it_then_the_write_completes(flaky):
    import errno

    url = flaky
    tpl = _template()
    storage.write_template(tpl, url)
    _Flaky.down = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    attempts = {
        "region": lambda: storage.write_region(tpl.isel(time=slice(0, 2)).compute() + 1, url,
                                               region={"time": slice(0, 2)}),
        "record": lambda: storage.ChunkRecord(url).mark((0,)),
        "complete": lambda: storage.mark_complete(url),
        "marker": lambda: storage.write_marker(storage.join(url, "_stage.json"), {"a": 1}),
        "read marker": lambda: storage.read_marker(storage.join(url, "_stage.json")),
        "open": lambda: storage.open_zarr(url),
        "state": lambda: storage.store_state(url),
        "template": lambda: storage.write_template(tpl, url),
        "whole": lambda: storage.write_dataset(tpl.compute(), url),
        "bytes": lambda: storage.write_bytes(storage.join(url, "file.nc"), b"CDF"),
        "plain": lambda: storage.write_plain_zarr(tpl.compute(), storage.join(url, "plain")),
    }
    for what, attempt in attempts.items():
        with pytest.raises(storage.StoreUnreachableError) as caught:
            attempt()
        msg = str(caught.value)
        assert msg.startswith(f"the store {url}") and "ConnectionResetError" in msg, (what, msg)
        assert "\n" not in msg and "run the same command again" in msg, (what, msg)
        assert isinstance(caught.value, storage.StoreError)  # a UserError: one line, exit 2
    _Flaky.down = None
    assert not storage.store_state(url)["complete"]
    storage.write_region(tpl.isel(time=slice(0, 2)).compute() + 1, url, region={"time": slice(0, 2)})
    storage.mark_complete(url)
    assert float(storage.open_zarr(url, require_complete=True).sm[0, 0, 0]) == 1.0


def test_a_bug_under_a_store_keeps_its_type(flaky):
    tpl = _template()
    storage.write_template(tpl, flaky)
    _Flaky.down = RuntimeError("a bug in the file system")
    with pytest.raises(RuntimeError, match="a bug in the file system"):
        storage.mark_complete(flaky)
    with pytest.raises(RuntimeError, match="a bug in the file system"):
        storage.write_marker(storage.join(flaky, "_stage.json"), {})


@pytest.mark.parametrize(("error", "unreachable"), [
    (ConnectionRefusedError(111, "Connect call failed"), True),
    (TimeoutError(), True),
    (OSError(28, "No space left on device"), True),
    (RuntimeError("wrapped"), True),  # raised from a refused connection (below)
    (FileNotFoundError(2, "No such file"), False),
    (PermissionError(13, "Permission denied"), False),
    (OSError("Forbidden: bucket/x"), False),
    (ValueError("a bad value"), False),
    (KeyError("x"), False),
    (storage.StoreError("no Zarr store at x"), False),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v))
def test_which_errors_are_the_store_failing(error, unreachable):
    if isinstance(error, RuntimeError):
        error.__cause__ = ConnectionRefusedError(111, "Connect call failed")
    assert storage._is_unreachable(error) is unreachable


def test_client_library_errors_are_the_store_failing():
    aiohttp = pytest.importorskip("aiohttp")
    retry = pytest.importorskip("gcsfs.retry")
    assert storage._is_unreachable(aiohttp.ServerDisconnectedError())
    assert storage._is_unreachable(retry.HttpError({"code": 503, "message": "unavailable"}))
    assert not storage._is_unreachable(retry.HttpError({"code": 404, "message": "not found"}))
    assert not storage._is_unreachable(retry.HttpError({"code": 400, "message": "bad"}))
    info = aiohttp.RequestInfo(aiohttp.client.URL("http://h/o"), "GET", {},
                               aiohttp.client.URL("http://h/o"))
    assert storage._is_unreachable(aiohttp.ClientResponseError(info, (), status=503))
    assert not storage._is_unreachable(aiohttp.ClientResponseError(info, (), status=404))


def test_the_error_and_the_store_pickle_for_workers():
    import pickle

    err = pickle.loads(pickle.dumps(storage.StoreUnreachableError("the store gs://b/x gone")))
    assert type(err) is storage.StoreUnreachableError and str(err) == "the store gs://b/x gone"
    pytest.importorskip("gcsfs")
    store = pickle.loads(pickle.dumps(storage.zarr_store("gs://bucket/x.zarr", {"token": "anon"})))
    assert store.url == "gs://bucket/x.zarr"
    assert storage.zarr_store("/tmp/local.zarr") == "/tmp/local.zarr"  # a path stays a path


def test_the_message_carries_no_query_string():
    err = ConnectionResetError("reset for https://h/o?access_token=SECRET&x=1 by peer")
    msg = storage._unreachable_message("gs://b/x.zarr", "reading zarr.json", err)
    assert "SECRET" not in msg and "gs://b/x.zarr" in msg and "by peer" in msg
    msg = storage._unreachable_message("https://user:PASSWORD@h/x.zarr", "reading it",
                                       ConnectionResetError("https://user:PASSWORD@h/x/c/0"))
    assert "PASSWORD" not in msg and "https://h/x.zarr" in msg, msg
