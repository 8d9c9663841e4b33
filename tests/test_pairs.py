"""Training samples: validity, residuals, splits, the Zarr table and the streaming loader."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud import storage
from casm_cloud.grid import EASE2Grid
from casm_cloud.pairs import (
    PairsError,
    SampleLoader,
    build_pairs,
    cycle_values,
    open_pairs,
    split_map,
    write_pairs,
)
from casm_cloud.seasonal import fit_seasonal_cycle


def fit_params(da: xr.DataArray, dim: str = "time") -> xr.Dataset:
    """Seasonal parameters from the seasonal stage's fit."""
    return fit_seasonal_cycle(da, dim=dim, min_obs=10).compute()


def scene(seed=0, nt=90, chunks=None):
    """Small seeded TB/SM scene on a 12 x 14 window of M25 with seasonal cycles and gaps."""
    win = EASE2Grid("M25").window(lat=(38.0, 41.0), lon=(-100.0, -96.5))
    rng = np.random.default_rng(seed)
    times = pd.date_range("2016-01-01", periods=nt, freq="3D")
    ny, nx = win.shape
    doy = 2 * np.pi * times.day_of_year.values / 365.25
    sm = (0.25 + 0.08 * np.sin(doy)[:, None, None] + 0.04 * rng.standard_normal((nt, ny, nx)))
    tb_h = 290 - 180 * sm + rng.standard_normal(sm.shape)
    tb_v = 300 - 120 * sm + rng.standard_normal(sm.shape)
    tb_h[rng.random(sm.shape) < 0.2] = np.nan
    tb_v[:, :, :2] = np.where(rng.random((nt, ny, 2)) < 0.5, np.inf, tb_v[:, :, :2])
    sm_obs = sm + 0.02 * rng.standard_normal(sm.shape)
    sm_obs[rng.random(sm.shape) < 0.3] = np.nan
    coords = {**win.coords(), "time": times}
    f32 = np.float32
    ds = xr.Dataset({"tb_h": (("time", "y", "x"), tb_h.astype(f32)),
                     "tb_v": (("time", "y", "x"), tb_v.astype(f32))}, coords=coords)
    target = xr.DataArray(sm_obs.astype(f32), dims=("time", "y", "x"), coords=coords, name="sm")
    chunks = chunks or {"time": 40, "y": 6, "x": 12}
    return ds.chunk(chunks), target.chunk(chunks)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    ds, target = scene()
    in_p = fit_params(ds.to_dataarray("variable").where(np.isfinite(ds.to_dataarray("variable"))))
    tg_p = fit_params(target)
    pairs = build_pairs(ds, target, in_p, tg_p, block_size=3, seed=5)
    url = str(tmp_path_factory.mktemp("pairs") / "pairs.zarr")
    write_pairs(pairs, url, chunk_size=500)
    return {"ds": ds, "target": target, "in_p": in_p, "tg_p": tg_p, "pairs": pairs, "url": url}


def test_samples_are_exactly_the_valid_points_with_residual_values(table):
    ds, target, in_p, tg_p = table["ds"], table["target"], table["in_p"], table["tg_p"]
    out = open_pairs(table["url"]).compute()
    valid = (np.isfinite(ds["tb_h"]) & np.isfinite(ds["tb_v"]) & np.isfinite(target)).values
    assert out.sizes["sample"] == valid.sum()
    ti = np.searchsorted(ds["time"].values, out["time"].values)
    r, c = out["row"].values, out["col"].values
    assert np.all(valid[ti, r, c])
    assert len(set(zip(ti, r, c, strict=True))) == out.sizes["sample"]  # no duplicates
    t = ds["time"].values
    for k, name in enumerate(["tb_h", "tb_v"]):
        p = in_p.sel(variable=name)
        cyc = cycle_values(p.amplitude.values, p.phase.values, p.offset.values, t)
        want = ds[name].values[ti, r, c] - cyc[ti, r, c]
        np.testing.assert_allclose(out["features"].values[:, k], want, rtol=1e-5, atol=1e-3)
    cyc = cycle_values(tg_p.amplitude.values, tg_p.phase.values, tg_p.offset.values, t)
    np.testing.assert_allclose(out["target"].values, target.values[ti, r, c] - cyc[ti, r, c],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["features"].values[:, 2], ds["lat"].values[r], rtol=1e-6)
    np.testing.assert_allclose(out["features"].values[:, 3], ds["lon"].values[c], rtol=1e-6)
    np.testing.assert_array_equal(out["y"].values, ds["y"].values[r])
    assert list(out["feature"].values) == ["tb_h", "tb_v", "lat", "lon"]


def test_spatial_blocks_hold_out_whole_pixels_and_sorted_by_split(table):
    out = open_pairs(table["url"]).compute()
    offsets = json.loads(out.attrs["split_offsets"])
    codes = out["split"].values
    assert np.all(np.diff(codes) >= 0)  # train, then val, then test
    for code, name in enumerate(("train", "val", "test")):
        a, b = offsets[name]
        assert b > a and np.all(codes[a:b] == code)
    pix = out["row"].values * 100 + out["col"].values
    per_split = [set(pix[codes == k]) for k in range(3)]
    assert not (per_split[0] & per_split[1]) and not (per_split[0] & per_split[2])
    shape = (table["ds"].sizes["y"], table["ds"].sizes["x"])
    assert shape == (12, 14)
    labels = split_map(shape, block_size=3, seed=5)
    np.testing.assert_array_equal(labels[out["row"].values, out["col"].values], codes)
    blocks = labels[::3, ::3]
    assert np.all(labels == np.kron(blocks, np.ones((3, 3), dtype=labels.dtype))[:12, :14])
    # 4 x 5 blocks: round(20 * 0.2) = 4 test, round(16 * 0.2) = 3 val
    assert np.bincount(blocks.ravel(), minlength=3).tolist() == [13, 3, 4]


def test_random_split_fractions_do_not_depend_on_chunks():
    ds, target = scene(seed=1)
    a = build_pairs(ds, target, split="random", seed=3).compute()
    ds2, target2 = scene(seed=1, chunks={"time": 17, "y": 5, "x": 7})
    b = build_pairs(ds2, target2, split="random", seed=3).compute()
    key = lambda o: sorted(zip(o["time"].values.astype(np.int64), o["row"].values,  # noqa: E731
                               o["col"].values, o["split"].values, strict=True))
    assert key(a) == key(b)
    frac = np.bincount(a["split"].values, minlength=3) / a.sizes["sample"]
    np.testing.assert_allclose(frac, [0.64, 0.16, 0.20], atol=0.03)  # 80/20, 20 % of train
    assert a.attrs["residuals"] == "features and target as given"


def test_build_pairs_is_lazy_and_the_table_is_complete(table):
    pairs = table["pairs"]
    assert all(pairs[v].chunks is not None for v in pairs.data_vars)
    assert storage.store_state(table["url"])["complete"]


def test_scaler_comes_from_the_training_split_only(table):
    out = open_pairs(table["url"]).compute()
    a, b = json.loads(out.attrs["split_offsets"])["train"]
    sc = out.attrs["scaler"]
    x = out["features"].values[a:b].astype(float)
    for k, name in enumerate(out.attrs["features"]):
        assert sc["mean"][name] == pytest.approx(x[:, k].mean(), rel=1e-6, abs=1e-6)
        assert sc["std"][name] == pytest.approx(x[:, k].std(), rel=1e-5)
    assert sc["mean"]["sm"] == pytest.approx(out["target"].values[a:b].astype(float).mean(),
                                             abs=1e-7)
    full = out["features"].values[:, 2].astype(float).mean()
    assert sc["mean"]["lat"] != pytest.approx(full, abs=1e-9)  # not the whole table's


def test_loader_streams_every_sample_once_scaled_and_reshuffled(table):
    out = open_pairs(table["url"]).compute()
    a, b = json.loads(out.attrs["split_offsets"])["train"]
    sc = out.attrs["scaler"]
    loader = SampleLoader(table["url"], "train", 64, ["tb_v", "lat"], "sm", shuffle_seed=0,
                          buffer_chunks=2)
    assert len(loader) == -(-(b - a) // 64)

    def epoch():
        xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in loader), strict=True)
        return np.concatenate(xs), np.concatenate(ys)

    x1, y1 = epoch()
    x2, y2 = epoch()
    assert x1.shape == (b - a, 2) and y1.shape == (b - a, 1)
    want_y = (out["target"].values[a:b] - sc["mean"]["sm"]) / sc["std"]["sm"]
    np.testing.assert_allclose(np.sort(y1.ravel()), np.sort(want_y), rtol=1e-5, atol=1e-6)
    want_lat = (out["features"].values[a:b, 2] - sc["mean"]["lat"]) / sc["std"]["lat"]
    np.testing.assert_allclose(np.sort(x1[:, 1]), np.sort(want_lat), rtol=1e-5, atol=1e-5)
    assert not np.array_equal(y1, y2)  # a new order every epoch
    np.testing.assert_array_equal(np.sort(y1.ravel()), np.sort(y2.ravel()))
    ordered = SampleLoader(table["url"], "test", 1000)
    ys = np.concatenate([y.numpy().ravel() for _, y in ordered])
    t0, t1 = json.loads(out.attrs["split_offsets"])["test"]
    np.testing.assert_allclose(ys, (out["target"].values[t0:t1] - sc["mean"]["sm"])
                               / sc["std"]["sm"], rtol=1e-5, atol=1e-6)


def test_errors_name_the_problem(table, tmp_path):
    ds, target = scene()
    with pytest.raises(PairsError, match="same time/y/x"):
        build_pairs(ds, target.isel(time=slice(1, None)))
    with pytest.raises(PairsError, match=r"no \['tb_v'\]"):
        build_pairs(ds, target, table["in_p"].sel(variable=["tb_h"]), table["tg_p"])
    with pytest.raises(PairsError, match="no valid samples"):
        build_pairs(ds, target.where(target > 10))
    with pytest.raises(PairsError, match="expected \\(time, y, x\\)"):
        build_pairs(ds, target.isel(time=0))
    with pytest.raises(PairsError, match=r"no feature\(s\) \['tb_10v'\]"):
        SampleLoader(table["url"], "train", 8, ["tb_10v"])
    with pytest.raises(PairsError, match="target 'sm', not 'sm_l1'"):
        SampleLoader(table["url"], "train", 8, target="sm_l1")
    pairs = build_pairs(ds, target, block_size=3)
    url = str(tmp_path / "unfinished.zarr")
    storage.write_template(pairs.chunk({"sample": 500}), url)
    with pytest.raises(PairsError, match="unfinished"):
        SampleLoader(url, "train", 8)


def test_loader_batches_are_reproducible_and_cross_buffer_boundaries(table):
    out = open_pairs(table["url"]).compute()
    a, b = json.loads(out.attrs["split_offsets"])["train"]
    sc = out.attrs["scaler"]
    want_y = (out["target"].values[a:b] - sc["mean"]["sm"]) / sc["std"]["sm"]

    def batches(loader):
        return [(x.numpy().copy(), y.numpy().copy()) for x, y in loader]

    # Unshuffled, one chunk per buffer, a batch size that never divides a chunk:
    # batches span buffers, all full but the last, in table order.
    plain = batches(SampleLoader(table["url"], "train", 97, buffer_chunks=1))
    assert [y.shape[0] for _, y in plain[:-1]] == [97] * (len(plain) - 1)
    np.testing.assert_allclose(np.concatenate([y for _, y in plain]).ravel(), want_y,
                               rtol=1e-5, atol=1e-6)
    dropped = SampleLoader(table["url"], "train", 97, buffer_chunks=1, drop_last=True)
    assert len(batches(dropped)) == len(dropped) == (b - a) // 97

    # Same seed: identical batches epoch by epoch; another seed: another order.
    one, two, other = (SampleLoader(table["url"], "train", 97, shuffle_seed=s, buffer_chunks=2)
                       for s in (7, 7, 8))
    for _ in range(2):
        e1, e2, e3 = batches(one), batches(two), batches(other)
        for (x1, y1), (x2, y2) in zip(e1, e2, strict=True):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)
        y1 = np.concatenate([y for _, y in e1]).ravel()
        assert not np.array_equal(y1, np.concatenate([y for _, y in e3]).ravel())
        np.testing.assert_allclose(np.sort(y1), np.sort(want_y), rtol=1e-5, atol=1e-6)
