"""The storage protocol through gs:// (gcp-storage-emulator) and s3:// (moto_server).

Region writes come from LocalCluster worker processes, as in a real run.
"""

import logging
import uuid

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud import catalog, schema, storage
from casm_cloud.grid import EASE2Grid

SECRET = "FAKE-SECRET-7f3a9c1e-do-not-leak"


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(params=["gcs", "s3"])
def bucket(request):
    root, so = request.getfixturevalue({"gcs": "gcs_emulator", "s3": "s3_server"}[request.param])
    return storage.join(root, uuid.uuid4().hex[:8]), so


def _smos(n_time=6, seed=0):
    win = EASE2Grid("M25").window_by_name("tiny")
    rng = np.random.default_rng(seed)
    data = rng.uniform(150, 290, (n_time, *win.shape)).astype("float32")
    ds = xr.Dataset({"tb_h": (("time", "y", "x"), data), "tb_v": (("time", "y", "x"), data + 20)},
                    coords={"time": pd.date_range("2016-01-01", periods=n_time), **win.coords()},
                    attrs=win.identity())
    return schema.apply_attrs(ds, "smos")


def _write_part(url, so, k, ds):
    """Runs on a worker: one region and its record entry."""
    from casm_cloud import storage as st

    part = ds.isel(time=slice(2 * k, 2 * k + 2))
    st.write_region(part, url, so, region={"time": slice(2 * k, 2 * k + 2)})
    st.ChunkRecord(url, so).mark({"time": k}, {"n": int(part.sizes["time"])})
    return k


def test_template_regions_from_workers_record_complete(bucket, client):
    root, so = bucket
    url = storage.join(root, "smos", "out.zarr")
    ds = _smos()
    tpl = ds.copy()
    for v in tpl.data_vars:
        tpl[v] = (tpl[v].dims, da.zeros(tpl[v].shape, chunks=(2, -1, -1), dtype="float32"),
                  tpl[v].attrs)
    storage.write_template(tpl, url, so, config_hash="h1")
    assert storage.store_state(url, so) == {"exists": True, "complete": False, "config_hash": "h1"}
    futures = client.map(_write_part, [url] * 3, [so] * 3, range(3), [ds] * 3)
    assert sorted(client.gather(futures)) == [0, 1, 2]
    assert storage.ChunkRecord(url, so).done() == {"time0", "time1", "time2"}
    with pytest.raises(storage.StoreError, match="unfinished"):
        storage.open_zarr(url, so, require_complete=True)
    storage.mark_complete(url, so, config_hash="h1")
    out = storage.open_zarr(url, so, require_complete=True)
    xr.testing.assert_equal(out[["tb_h", "tb_v"]].load(), ds[["tb_h", "tb_v"]])
    assert out.attrs["ease2_grid"] == "M25"


def test_catalog_in_bucket_with_relative_entry(bucket):
    root, so = bucket
    ds = _smos(seed=1)
    ds.to_zarr(storage.join(root, "sim", "sources", "smos.zarr"), mode="w", consolidated=False,
               zarr_format=3, storage_options=so)
    path = catalog.write_catalog(
        {"smos": catalog.make_entry("canonical_zarr", "sources/smos.zarr", kind="smos")},
        storage.join(root, "sim", "catalog.yaml"), storage_options=so)
    out = catalog.open_source(catalog.open_catalog(path, so), "smos")
    xr.testing.assert_equal(out.tb_v.load(), ds.tb_v)


def test_no_secret_in_logs_catalogs_errors_or_attrs(s3_server, tmp_path, caplog):
    root, so = s3_server
    secret_so = {**so, "secret": SECRET}  # moto accepts any secret
    url = storage.join(root, "secret-test", "a.zarr")
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    ds = _smos(n_time=2)
    tpl = ds.chunk({"time": 1})
    storage.write_template(tpl, url, secret_so, config_hash="h")
    storage.write_region(ds, url, secret_so, region={"time": slice(0, 2)})
    storage.ChunkRecord(url, secret_so).mark({"time": 0})
    storage.mark_complete(url, secret_so, config_hash="h")
    out = storage.open_zarr(url, secret_so, require_complete=True)
    seen.append(repr(out.attrs))
    seen += [repr(out[v].attrs) for v in out.variables]
    fs, path = storage.url_to_fs(url, secret_so)
    seen += [fs.cat(p).decode("utf-8", "replace") for p in fs.find(path) if p.endswith(".json")]

    # a catalog may not carry it, and the refusal does not echo it
    with pytest.raises(catalog.CatalogError) as err:
        catalog.make_entry("canonical_zarr", url, kind="smos", storage_options=secret_so)
    seen.append(str(err.value))
    cat_path = catalog.write_catalog(
        {"a": catalog.make_entry("canonical_zarr", url, kind="smos")}, str(tmp_path / "c.yaml"))
    seen.append(open(cat_path).read())
    # credentials passed at run time reach the store but are not stored
    ds2 = catalog.open_source(cat_path, "a", storage_options=secret_so)
    seen.append(repr(ds2.attrs))
    # error messages on missing stores and bad input
    for call in (lambda: storage.open_zarr(url + "-missing", secret_so),
                 lambda: catalog.open_source(cat_path, "a", storage_options=secret_so,
                                             variables=["nope"])):
        with pytest.raises(Exception) as e:
            call()
        seen.append(str(e.value))
    seen.append(caplog.text)
    joined = "\n".join(seen)
    assert "tb_h" in joined and "casm_complete" in joined  # we did search real content
    assert SECRET not in joined


@pytest.mark.parametrize("tail", [b"\r", b"\n", b"\r\n", b"--==0==--", b""])
def test_object_bytes_round_trip_exactly(gcs_emulator, tail):
    """Objects ending in line-break bytes keep them (see tests/_gcs_emulator.py)."""
    root, so = gcs_emulator
    fs, path = storage.url_to_fs(storage.join(root, "bytes", uuid.uuid4().hex), so)
    data = bytes(range(256)) + tail
    fs.pipe(path, data)
    assert fs.cat(path) == data
