"""Seasonal cycle: parity with curve_fit, exact median fallback, chunking, laziness, stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.optimize import curve_fit

from casm_cloud import storage
from casm_cloud.cli import main as cli_main
from casm_cloud.seasonal import (
    METHODS,
    cycle_values,
    deseasonalize,
    fit_seasonal_cycle,
    seasonal_cycle,
    seasonal_params,
    seasonal_residuals,
    write_seasonal,
    year_phase,
)

SINE, MEDIAN, EMPTY, MEAN = 1, 2, 0, 3


def _sinusoid(theta, amplitude, phase, offset):
    return amplitude * np.sin(theta + phase) + offset


def _curve_fit_cycle(t, y, at):
    """The reference: scipy curve_fit of A sin(θ + φ) + b (float64), neutral start."""
    m = np.isfinite(y)
    th = year_phase(t)[m]
    popt, _ = curve_fit(_sinusoid, th, y[m].astype(np.float64),
                        p0=[np.std(y[m]), 0.0, np.mean(y[m])])
    return _sinusoid(year_phase(at), *popt)


def _synthetic(seed=0, nt=900, shape=(6, 8), gaps=0.4, dtype=np.float32, freq="2D",
               start="2009-03-01"):
    """Seeded pixels: random amplitude/phase/offset, AR-ish noise, random gaps."""
    rng = np.random.default_rng(seed)
    t = pd.date_range(start, periods=nt, freq=freq).values
    th = year_phase(t)[:, None, None]
    amp = rng.uniform(0.02, 0.15, shape)
    ph = rng.uniform(-np.pi, np.pi, shape)
    off = rng.uniform(0.1, 0.4, shape)
    y = amp * np.sin(th + ph) + off + rng.normal(0, 0.03, (nt, *shape))
    y[rng.random(y.shape) < gaps] = np.nan
    da = xr.DataArray(y.astype(dtype), dims=("time", "y", "x"), coords={"time": t}, name="sm",
                      attrs={"units": "m3 m-3"})
    return da


class _NoCompute:
    """A dask scheduler that fails the test if anything is computed."""

    def __call__(self, dsk, keys, **kwargs):
        raise AssertionError("dask computed something in a lazy function")


# ------------------------------------------------------------------ parity


@pytest.mark.parametrize("chunks", [None, {"time": -1}, {"time": 97, "x": 3}, {"time": 1}])
def test_parity_with_curve_fit_on_synthetic_pixels(chunks):
    da = _synthetic(seed=1)
    if chunks:
        da = da.chunk(chunks)
    p = fit_seasonal_cycle(da).compute()
    year = pd.date_range("2011-01-01", "2011-12-31", freq="D").values
    ours = cycle_values(p.amplitude.values, p.phase.values, p.offset.values, year)
    y = np.asarray(da.values)
    assert (p.method.values == SINE).all()
    for j in range(y.shape[1]):
        for i in range(y.shape[2]):
            ref = _curve_fit_cycle(da.time.values, y[:, j, i], year)
            scale = np.nanmax(y[:, j, i]) - np.nanmin(y[:, j, i])
            assert np.abs(ours[:, j, i] - ref).max() < 1e-4 * scale
            assert p.n_obs.values[j, i] == np.isfinite(y[:, j, i]).sum()


def test_fallback_is_exact_nanmedian_and_empty_is_nan():
    da = _synthetic(seed=2, nt=300, shape=(3, 4), gaps=0.0)
    y = da.values.copy()
    rng = np.random.default_rng(3)
    counts = {(0, 0): 0, (0, 1): 1, (0, 2): 2, (0, 3): 7, (1, 0): 38, (1, 1): 39, (1, 2): 40}
    for (j, i), n in counts.items():
        keep = rng.choice(y.shape[0], n, replace=False)
        col = np.full(y.shape[0], np.nan, y.dtype)
        col[keep] = y[keep, j, i]
        y[:, j, i] = col
    for dtype in (np.float32, np.float64):
        for chunks in (None, {"time": 1}, {"time": 13, "y": 2}):
            d = da.copy(data=y.astype(dtype))
            p = fit_seasonal_cycle(d.chunk(chunks) if chunks else d).compute()
            for (j, i), n in counts.items():
                col = y[:, j, i].astype(dtype)
                assert p.n_obs.values[j, i] == n
                if n == 0:
                    assert p.method.values[j, i] == EMPTY
                    assert np.isnan(p.offset.values[j, i]) and np.isnan(p.amplitude.values[j, i])
                elif n < 40:
                    assert p.method.values[j, i] == MEDIAN
                    assert p.offset.values[j, i] == np.nanmedian(col)  # exact, not close
                    assert p.amplitude.values[j, i] == 0.0
                    np.testing.assert_allclose(p.residual_std.values[j, i], np.nanstd(col),
                                               rtol=1e-6)
                else:
                    assert p.method.values[j, i] == SINE


def test_singular_system_falls_back():
    # Every value on 1 January or 1 July of common years: two distinct phases,
    # a singular system (in leap years 1 July sits at another phase).
    years = [y for y in range(1950, 2026) if y % 4][:36]
    t = pd.DatetimeIndex([f"{y}-{m}-01" for y in years for m in (1, 7)]).values
    rng = np.random.default_rng(4)
    y = rng.normal(0.3, 0.05, (t.size, 2))
    y[10:, 1] = np.nan  # 10 values: median (fewer than min_obs)
    da = xr.DataArray(y, dims=("time", "pixel"), coords={"time": t})
    p = fit_seasonal_cycle(da.chunk({"time": 9}), min_obs=20).compute()
    assert p.method.values.tolist() == [MEAN, MEDIAN]
    assert p.offset.values[0] == pytest.approx(y[:, 0].mean(), rel=1e-12)
    assert p.offset.values[1] == np.nanmedian(y[:, 1])


def test_chunking_gives_the_same_parameters():
    da = _synthetic(seed=5, nt=400, gaps=0.6)
    ref = fit_seasonal_cycle(da)
    for chunks in ({"time": 1}, {"time": 7, "y": 4}, {"time": 400, "x": 1}):
        p = fit_seasonal_cycle(da.chunk(chunks)).compute()
        for name in ref.data_vars:
            np.testing.assert_allclose(p[name].values, ref[name].values, rtol=1e-10, atol=1e-13)
            assert p[name].dtype == ref[name].dtype


def test_residual_std_and_deseasonalize():
    da = _synthetic(seed=6, nt=500, dtype=np.float64)
    res, p = deseasonalize(da.chunk({"time": 64}))
    r = res.values
    np.testing.assert_allclose(p.residual_std.values, np.nanstd(r, axis=0), rtol=1e-9)
    cyc = seasonal_cycle(p.compute(), da.time)
    np.testing.assert_allclose(r, da.values - cyc.values, rtol=0, atol=1e-12)
    assert res.dims == da.dims and res.dtype == da.dtype
    assert res.chunks == da.chunk({"time": 64}).chunks
    assert np.isnan(r[np.isnan(da.values)]).all()
    # with given parameters: the same residual, dims in any order
    res2, _ = deseasonalize(da.transpose("x", "time", "y"), p.compute())
    np.testing.assert_allclose(res2.transpose(*da.dims).values, r, atol=1e-12)


def test_multi_variable_fit_has_variable_dim():
    a = _synthetic(seed=7, nt=200, shape=(3, 4))
    ds = xr.Dataset({"tb_h": a * 300, "tb_v": a * 320}).chunk({"time": 50})
    p = fit_seasonal_cycle(ds.to_dataarray("variable"))
    assert p.amplitude.dims == ("variable", "y", "x")
    pc = p.compute()
    single = fit_seasonal_cycle(ds.tb_v).compute()
    # distinct inputs never share dask keys (a shared name would mix them up)
    other = fit_seasonal_cycle(ds.tb_h)
    assert other.amplitude.data.name != fit_seasonal_cycle(ds.tb_v).amplitude.data.name
    assert deseasonalize(ds.tb_h)[0].data.name != deseasonalize(ds.tb_v)[0].data.name
    np.testing.assert_allclose(pc.amplitude.sel(variable="tb_v").values, single.amplitude.values,
                               rtol=1e-12)


# --------------------------------------------------------------- laziness


def test_functions_are_lazy_on_dask_input():
    import dask

    da = _synthetic(seed=8, nt=120).chunk({"time": 10})
    with dask.config.set(scheduler=_NoCompute()):
        p = fit_seasonal_cycle(da)
        res, _ = deseasonalize(da, p)
        cyc = seasonal_cycle(p, pd.date_range("2030-01-01", periods=40).values, time_chunks=10)
        ps = seasonal_params(xr.Dataset({"a": da, "b": da + 1}))
        seasonal_residuals(xr.Dataset({"a": da, "b": da + 1}), ps)
    assert cyc.chunks[0] == (10,) * 4
    assert all(hasattr(v.data, "dask") for v in p.data_vars.values())
    np.testing.assert_allclose(res.compute().values,
                               deseasonalize(da.compute())[0].values, atol=1e-6)


# ------------------------------------------------------- phase convention


def test_phase_convention_calendar_year():
    t = np.array(["2021-01-01", "2021-07-02T12", "2020-12-31T12", "2020-03-01", "2021-03-01"],
                 dtype="datetime64[ns]")
    th = year_phase(t)
    assert th[0] == 0.0
    assert th[1] == pytest.approx(2 * np.pi * 182.5 / 365)
    assert th[2] == pytest.approx(2 * np.pi * 365.5 / 366)  # leap year stretched
    assert th[3] == pytest.approx(2 * np.pi * 60 / 366)
    assert th[4] == pytest.approx(2 * np.pi * 59 / 365)
    # the same cycle every year; new months need no refit
    p = fit_seasonal_cycle(_synthetic(seed=9, nt=400))
    a = seasonal_cycle(p, pd.date_range("2013-01-01", periods=365).values)
    b = seasonal_cycle(p, pd.date_range("2031-01-01", periods=365).values)
    np.testing.assert_array_equal(a.values, b.values)
    v = cycle_values(p.amplitude.values, p.phase.values, p.offset.values,
                     pd.date_range("2031-01-01", periods=365).values)
    np.testing.assert_array_equal(v, b.values)
    assert cycle_values(0.1, 0.0, 0.3, t).shape == (5,)
    assert cycle_values(np.ones((2, 3)), 0.0, np.zeros(3), t).shape == (5, 2, 3)


# ---------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error():
    da = _synthetic(seed=10, nt=50, shape=(2, 2))
    with pytest.raises(ValueError, match="no dimension 'date'"):
        fit_seasonal_cycle(da, dim="date")
    with pytest.raises(ValueError, match="must be datetime64"):
        fit_seasonal_cycle(da.assign_coords(time=np.arange(50.0)))
    with pytest.raises(ValueError, match="not strictly increasing"):
        fit_seasonal_cycle(da.isel(time=np.r_[0:10, 5, 11:50]))
    with pytest.raises(ValueError, match="min_obs"):
        fit_seasonal_cycle(da, min_obs=3)
    with pytest.raises(ValueError, match="parameters lack"):
        deseasonalize(da, xr.Dataset({"amplitude": da.isel(time=0)}))
    with pytest.raises(ValueError, match="do not match"):
        deseasonalize(da, fit_seasonal_cycle(da.isel(x=0)))
    with pytest.raises(ValueError, match="datetime64"):
        cycle_values(1.0, 0.0, 0.0, np.arange(3))


# ------------------------------------------------------------- real series


def _smap_series(real_data):
    ds = xr.open_dataset(real_data / "qa4sm_hawaii/SMAP_L3/SMAP_V9_AM_PM/netcdf/0166.nc")
    idx = ds["locationIndex"].values
    sm, t = ds["soil_moisture"].values, ds["time"].values
    out = []
    for i in range(ds.sizes["locations"]):
        sel = idx == i
        order = np.argsort(t[sel], kind="stable")
        out.append(xr.DataArray(sm[sel][order], dims="time", coords={"time": t[sel][order]}))
    return out


def _smos_series(real_data):
    ds = xr.open_dataset(real_data / "qa4sm_hawaii/SMOS_L3/SMOSL3_v339_ASC/0165.nc")
    return ds["Soil_Moisture"].transpose("time", "locations").load()


def _paper_variant(t, y, at):
    """The paper's curve_fit: period free in [365, 366] days, amplitude in [0, range]."""
    m = np.isfinite(y)
    td = (t - t[0]) / np.timedelta64(1, "D")
    rng = np.nanmax(y) - np.nanmin(y)

    def f(d, amp, period, phase, off):
        return amp * np.sin(2 * np.pi * d / period + phase) + off

    best = None
    for phase0 in np.linspace(-np.pi, np.pi, 6, endpoint=False):
        popt, _ = curve_fit(f, td[m], y[m], p0=[np.std(y[m]), 365.5, phase0, np.mean(y[m])],
                            bounds=([0, 365, -4 * np.pi, -np.inf], [rng, 366, 4 * np.pi, np.inf]))
        ssr = np.sum((f(td[m], *popt) - y[m]) ** 2)
        if best is None or ssr < best[0]:
            best = (ssr, popt)
    return f((at - t[0]) / np.timedelta64(1, "D"), *best[1])


def _check_real(t, y, p, paper_tol, min_obs=40):
    m = np.isfinite(y)
    n = int(m.sum())
    assert int(p.n_obs) == n
    if n == 0:
        assert int(p.method) == EMPTY and np.isnan(float(p.offset))
        return None
    if n < min_obs:
        assert int(p.method) == MEDIAN and float(p.offset) == np.nanmedian(y)
        return None
    assert int(p.method) == SINE
    ours = cycle_values(p.amplitude.values, p.phase.values, p.offset.values, t)
    scale = np.nanmax(y) - np.nanmin(y)
    assert np.abs(ours - _curve_fit_cycle(t, y, t)).max() < 1e-4 * scale
    paper = np.abs(ours - _paper_variant(t, y.astype(np.float64), t)).max() / scale
    assert paper < paper_tol
    return paper


def test_parity_on_real_smap_series(real_data):
    diffs = []
    for da in _smap_series(real_data):
        p = fit_seasonal_cycle(da.chunk({"time": 500}))
        d = _check_real(da.time.values, da.values, p.compute(), paper_tol=0.01)
        diffs.append(d)
    assert sum(d is not None for d in diffs) >= 3  # the cells with data were compared


def test_parity_on_real_smos_series(real_data):
    sm = _smos_series(real_data)
    t = sm.time.values
    # 446 ocean cells are empty, 10 land cells have 1932-1968 values: min_obs
    # 1940 sends some of those to the exact median of ~1930 real values.
    for min_obs in (40, 1940):
        p = fit_seasonal_cycle(sm.chunk({"time": 365, "locations": 100}), min_obs=min_obs)
        p = p.compute()
        assert set(np.unique(p.method.values).tolist()) == (
            {EMPTY, SINE} if min_obs == 40 else {EMPTY, MEDIAN, SINE})
        for i in range(sm.sizes["locations"]):
            _check_real(t, sm.values[:, i], p.isel(locations=i), paper_tol=0.01, min_obs=min_obs)


# ------------------------------------------------------------ stage and CLI


def _write_input(path, nt=120, time_chunk=30):
    a = _synthetic(seed=11, nt=nt, shape=(4, 5))
    a[:, 0, 0] = np.nan
    ds = xr.Dataset({"tb_h": (a * 300).assign_attrs(units="K"),
                     "tb_v": (a * 320).assign_attrs(units="K")})
    ds.chunk({"time": time_chunk}).to_zarr(path, zarr_format=3, consolidated=False)
    return ds


def test_cli_seasonal_writes_parameters_and_residuals(tmp_path, capsys):
    src = _write_input(str(tmp_path / "in.zarr"))
    out, res = str(tmp_path / "p.zarr"), str(tmp_path / "r.zarr")
    assert cli_main(["seasonal", str(tmp_path / "in.zarr"), "--out", out, "--residuals", res,
                     "--min-obs", "30"]) == 0
    assert "sine 38" in capsys.readouterr().out
    assert storage.store_state(out)["complete"] and storage.store_state(res)["complete"]
    p = storage.open_zarr(out, require_complete=True).compute()
    assert p.amplitude.dims == ("variable", "y", "x")
    assert p.attrs["seasonal_min_obs"] == 30
    assert p.method.attrs["flag_meanings"] == " ".join(METHODS[k] for k in sorted(METHODS))
    ref = fit_seasonal_cycle(src.tb_v, min_obs=30)
    np.testing.assert_allclose(p.amplitude.sel(variable="tb_v").values, ref.amplitude.values,
                               rtol=1e-12)
    r = storage.open_zarr(res)
    assert r.tb_h.dtype == np.float32 and r.tb_h.chunks == src.chunk({"time": 30}).tb_h.chunks
    np.testing.assert_allclose(r.tb_v.values, deseasonalize(src.tb_v, ref)[0].values, atol=1e-4)
    # one variable: still a `variable` dimension, as the recipe's stores have
    assert cli_main(["seasonal", str(tmp_path / "in.zarr"), "--out", str(tmp_path / "p1.zarr"),
                     "--vars", "tb_h"]) == 0
    p1 = storage.open_zarr(str(tmp_path / "p1.zarr"))
    assert p1.sizes["variable"] == 1 and p1["variable"].values.tolist() == ["tb_h"]


def test_cli_seasonal_bad_input(tmp_path, capsys):
    _write_input(str(tmp_path / "in.zarr"))
    rc = cli_main(["seasonal", str(tmp_path / "in.zarr"), "--out", str(tmp_path / "p.zarr"),
                   "--vars", "tb_x"])
    assert rc == 2 and "tb_x" in capsys.readouterr().err
    rc = cli_main(["seasonal", str(tmp_path / "in.zarr"), "--out", str(tmp_path / "p.zarr"),
                   "--min-obs", "2"])
    assert rc == 2 and "min_obs" in capsys.readouterr().err
    assert not storage.store_state(str(tmp_path / "p.zarr"))["complete"]


def test_stage_on_local_cluster(tmp_path):
    from distributed import Client, LocalCluster

    src = _write_input(str(tmp_path / "in.zarr"), nt=90, time_chunk=1)
    ds = storage.open_zarr(str(tmp_path / "in.zarr"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster):
        params = seasonal_params(ds, min_obs=20)
        got = write_seasonal(params, str(tmp_path / "p.zarr"), data=ds,
                             residuals_url=str(tmp_path / "r.zarr"))
    ref = fit_seasonal_cycle(src.to_dataarray("variable"), min_obs=20)
    ref = ref.sel(variable=got["variable"].values)
    for name in ("amplitude", "phase", "offset", "residual_std"):
        np.testing.assert_allclose(got[name].values, ref[name].values, rtol=1e-9, atol=1e-12)
    assert storage.store_state(str(tmp_path / "p.zarr"))["complete"]


def test_residuals_read_each_chunk_in_the_task_that_computes_it(tmp_path):
    # The reading of a stored chunk fuses into its residual task: no chunk is
    # read by a task of its own and held in memory until its residual runs.
    import dask

    _write_input(str(tmp_path / "in.zarr"), nt=90, time_chunk=30)
    ds = storage.open_zarr(str(tmp_path / "in.zarr"))
    write_seasonal(seasonal_params(ds, ["tb_h"], min_obs=20), str(tmp_path / "p.zarr"))
    # dask-backed; one variable is still a `variable` dimension (of size 1)
    stored = storage.open_zarr(str(tmp_path / "p.zarr")).isel(variable=0, drop=True)
    for params in (stored, stored.compute()):
        res, _ = deseasonalize(ds.tb_h, params)
        (opt,) = dask.optimize(res.data)
        names = {k[0] for k in dict(opt.__dask_graph__()) if isinstance(k, tuple)}
        assert ds.tb_h.data.name not in names
        assert len([k for k in dict(opt.__dask_graph__()) if k[0] == opt.name]) == 3


def test_partials_carry_values_only_while_a_pixel_may_need_the_median():
    # What keeps the fit's memory flat: a dense chunk's partial is its nine sums,
    # and one-step chunks (ERA5 on the cloud) carry each pixel's values only
    # until the merged count passes min_obs - 1.
    from casm_cloud.seasonal import _combine, _partial_block

    da = _synthetic(seed=6, nt=60, shape=(3, 5), gaps=0.0)
    y = da.values
    th = year_phase(da.time.values)
    s, c = np.sin(th), np.cos(th)
    sums, idx, vals = _partial_block(y, s, c, kbuf=39)
    assert sums.shape == (9, 3, 5) and idx.size == 0 and vals.size == 0
    steps = [_partial_block(y[i:i + 1], s[i:i + 1], c[i:i + 1], kbuf=39) for i in range(60)]
    _, idx, vals = _combine(steps[:39], kbuf=39)
    assert idx.tolist() == list(range(15)) and vals.shape == (15, 39)
    np.testing.assert_array_equal(vals, y[:39].reshape(39, 15).T)
    _, idx, vals = _combine(steps, kbuf=39)
    assert idx.size == 0 and vals.size == 0
