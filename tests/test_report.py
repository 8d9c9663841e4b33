"""The report: scores against the truth, sensor changes, the HTML page and figures."""

from __future__ import annotations

import re

import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud.aggregate import nday_mean
from casm_cloud.grid import EASE2Grid
from casm_cloud.report import (
    harmonic_anomaly,
    scores_against_truth,
    sensor_changes_from_source,
    write_report,
)
from casm_cloud.seasonal import deseasonalize, year_phase
from casm_cloud.testing import SENSOR_CHANGES, make_product, make_truth

WINDOW = EASE2Grid("M25").window_by_name("tiny").subwindow(slice(0, 4), slice(0, 5))
TIMES = pd.date_range("2008-07-01", "2013-03-01", freq="3D")


@pytest.fixture(scope="module")
def truth():
    return make_truth(WINDOW, TIMES, seed=4, time_chunk=50)


@pytest.fixture(scope="module")
def product(truth):
    return make_product(WINDOW, TIMES, seed=4, truth=truth, era_bias=(0.02, 0.0, -0.01),
                        time_chunk=50)


def _numpy_r(x, y):
    ok = np.isfinite(x) & np.isfinite(y)
    return np.corrcoef(x[ok], y[ok])[0, 1]


def test_scores_against_numpy_reference(product, truth):
    s = scores_against_truth(product, truth)
    p, t = product["sm"].values.astype(float), truth["sm_l1"].values.astype(float)
    r = [_numpy_r(p[:, j, i], t[:, j, i]) for j in range(p.shape[1]) for i in range(p.shape[2])]
    assert s["R"] == pytest.approx(np.median(r), rel=1e-9)
    ub = []
    for j in range(p.shape[1]):
        for i in range(p.shape[2]):
            ok = np.isfinite(p[:, j, i])
            d = (p[ok, j, i] - p[ok, j, i].mean()) - (t[ok, j, i] - t[ok, j, i].mean())
            ub.append(np.sqrt(np.mean(d**2)))
    assert s["ubRMSE"] == pytest.approx(np.median(ub), rel=1e-9)
    assert s["n_pixels"] == 20
    assert 0.5 < s["residual_R"] < s["R"] < 1.0
    # The known bias steps of the factory: +0.02 -> 0 -> -0.01.
    steps = s["bias_steps"]
    assert list(steps.values()) == pytest.approx([-0.02, -0.01], abs=0.003)
    assert s["bias_step"] == steps["nn_amsre → mean_nn_amsre_nn_smos"]


def test_perfect_product_scores_perfectly(truth):
    perfect = truth.rename({"sm_l1": "sm"})[["sm"]]
    s = scores_against_truth(perfect, truth, sensor_changes={})
    assert s["R"] == pytest.approx(1.0) and s["residual_R"] == pytest.approx(1.0)
    assert s["ubRMSE"] == pytest.approx(0.0, abs=1e-7) and s["bias"] == pytest.approx(0.0)
    assert s["bias_steps"] == {} and np.isnan(s["bias_step"])


def test_daily_truth_is_binned_to_the_product(product):
    daily = make_truth(WINDOW, pd.date_range("2008-06-28", "2013-03-05", freq="1D"), seed=9)
    s = scores_against_truth(product, daily, sensor_changes=SENSOR_CHANGES)
    assert np.isfinite(s["R"]) and s["n_pixels"] == 20
    # The same as scoring against the truth's own 3-day means (not its values on bin starts).
    binned = nday_mean(daily, 3)
    assert s == scores_against_truth(product, binned, sensor_changes=SENSOR_CHANGES)
    on_starts = daily.sel(time=product.time.values)
    assert s["R"] != scores_against_truth(product, on_starts, sensor_changes={})["R"]


def _series(n_valid, seed=2):
    """Three pixels of 2-daily values with an annual cycle: full, ``n_valid`` values, empty."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2010-01-01", periods=400, freq="2D")
    wt = year_phase(t.values)
    x = 0.2 + 0.05 * np.sin(wt)[:, None] + 0.03 * np.cos(wt)[:, None] \
        + 0.02 * rng.standard_normal((400, 3))
    x[n_valid:, 1] = np.nan
    x[:, 2] = np.nan
    return xr.DataArray(x, dims=("time", "x"), coords={"time": t}, name="sm")


def test_residual_is_the_seasonal_stage_residual():
    """The report scores the residual the networks learn: seasonal's fit, min_obs, median."""
    da = _series(n_valid=20).chunk({"time": 64})
    anom = harmonic_anomaly(da)
    assert anom.chunks is not None
    got = anom.values
    want, _ = deseasonalize(da, min_obs=40)
    np.testing.assert_array_equal(got[:, 0], want.values[:, 0])
    # 20 valid values < min_obs = 40: the cycle is the median (not a sinusoid, not the mean).
    x = da.values[:20, 1]
    np.testing.assert_allclose(got[:20, 1], x - np.median(x), rtol=0, atol=1e-15)
    assert np.isnan(got[20:, 1]).all() and np.isnan(got[:, 2]).all()
    # With min_obs = 10 the same 20 values get a sine fit.
    ten = harmonic_anomaly(da, min_obs=10).values
    want10, _ = deseasonalize(da, min_obs=10)
    np.testing.assert_array_equal(ten[:20, 1], want10.values[:20, 1])
    assert not np.allclose(ten[:20, 1], x - np.median(x))


def test_residual_r_uses_min_obs():
    """scores_against_truth's residual_R is the R of seasonal residuals with its min_obs."""
    t = pd.date_range("2010-01-01", periods=300, freq="3D")
    rng = np.random.default_rng(5)
    wt = year_phase(t.values)[:, None, None]
    truth = 0.25 + 0.06 * np.sin(wt + 0.3) + 0.03 * rng.standard_normal((300, 2, 2))
    prod = truth + 0.02 * rng.standard_normal(truth.shape)
    prod[30:, 0, 0] = np.nan  # 30 pairs: median fallback under min_obs=40, sine under 20
    coords = {"time": t, "y": [1.0, 0.0], "x": [0.0, 1.0]}
    p = xr.Dataset({"sm": (("time", "y", "x"), prod)}, coords=coords)
    tr = xr.Dataset({"sm_l1": (("time", "y", "x"), truth)}, coords=coords)
    for min_obs in (40, 20):
        s = scores_against_truth(p, tr, sensor_changes={}, min_obs=min_obs)
        pr, _ = deseasonalize(p["sm"], min_obs=min_obs)
        trr, _ = deseasonalize(tr["sm_l1"], min_obs=min_obs)
        rs = [_numpy_r(pr.values[:, j, i], trr.values[:, j, i]) for j in range(2)
              for i in range(2)]
        assert s["residual_R"] == pytest.approx(np.median(rs), rel=1e-9)
        assert s["n_pixels"] == 4


def test_sensor_changes_from_source(product):
    changes = sensor_changes_from_source(product)
    assert list(changes) == ["nn_amsre → mean_nn_amsre_nn_smos", "mean_nn_amsre_nn_smos → nn_smos"]
    # First product time step on or after each change.
    for got, want in zip(changes.values(), SENSOR_CHANGES.values(), strict=True):
        first = TIMES[TIMES >= pd.Timestamp(want)][0]
        assert got == str(first.date())


def _validation_table(seed=0):
    rng = np.random.default_rng(seed)
    n = 12
    return pd.DataFrame({
        "product": "casm", "station": [f"st{i}" for i in range(n)],
        "network": rng.choice(["SCAN", "USCRN"], n), "lat": rng.uniform(37, 38.5, n),
        "lon": rng.uniform(-99, -97.5, n), "n": rng.integers(100, 300, n),
        "R": rng.uniform(0.4, 0.9, n), "ubRMSE": rng.uniform(0.02, 0.06, n),
        "bias": rng.normal(0, 0.02, n),
    })


def test_write_report_page_figures_and_tables(tmp_path, product, truth):
    consistency = pd.DataFrame({"date": ["2010-01-17"], "step": [0.001], "p_value": [0.4]})
    index = write_report(tmp_path / "report", product=product, truth=truth,
                         validation=_validation_table(), consistency=consistency,
                         title="tiny <test>")
    assert index == tmp_path / "report" / "index.html"
    page = index.read_text()
    assert "<title>tiny &lt;test&gt;</title>" in page
    images = re.findall(r'<img src="([^"]+)"', page)
    links = re.findall(r'<a href="([^"]+)"', page)
    for name in images + links:
        assert (index.parent / name).stat().st_size > 0, name
    for expected in ("maps_mean_cv.png", "hovmoller.png", "uncertainty_maps.png",
                     "global_mean.png", "source_share.png", "validation_boxplot.png",
                     "validation_map_R.png"):
        assert expected in images
    for table in ("summary.csv", "scores_vs_truth.csv", "validation.csv", "consistency.csv"):
        assert table in links
    scores = pd.read_csv(index.parent / "scores_vs_truth.csv").set_index("score")["value"]
    assert 0.5 < float(scores["R"]) < 1.0
    assert "bias step: nn_amsre → mean_nn_amsre_nn_smos" in scores.index
    assert "Scores against the truth" in page and "Validation against stations" in page
    assert not list(tmp_path.glob(".report-*"))  # the working folder is gone


def test_rewrite_replaces_and_refuses_foreign_folders(tmp_path, product):
    small = product.isel(time=slice(0, 120))[["sm"]]
    out = tmp_path / "report"
    write_report(out, product=small)
    (out / "stale.png").write_bytes(b"x")
    write_report(out, product=small)
    assert not (out / "stale.png").exists()
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(ValueError, match="not a report"):
        write_report(foreign, product=small)
    assert (foreign / "thesis.tex").exists()


def test_write_report_to_a_url(product):
    url = "memory://casm-test/report"
    index = write_report(url, product=product.isel(time=slice(0, 60)))
    fs = fsspec.filesystem("memory")
    assert index == url + "/index.html"
    assert fs.exists("/casm-test/report/index.html")
    assert fs.exists("/casm-test/report/hovmoller.png")


def test_missing_variables_are_named(tmp_path, product, truth):
    with pytest.raises(KeyError, match="'sm'"):
        write_report(tmp_path / "r", product=product.drop_vars("sm"))
    with pytest.raises(KeyError, match="'sm_l1'"):
        scores_against_truth(product, truth.drop_vars("sm_l1"))


def test_report_computes_only_small_aggregates(tmp_path):
    """Everything the report pulls out of dask is far smaller than one variable."""
    import dask
    import dask.threaded
    from dask.core import flatten

    window = EASE2Grid("M25").window_by_name("demo")
    times = pd.date_range("2009-06-01", "2011-06-01", freq="3D")
    truth = make_truth(window, times, seed=1, time_chunk=60)
    product = make_product(window, times, seed=1, truth=truth, time_chunk=60)
    one_variable = product["sm"].nbytes
    pulled = []

    def get(dsk, keys, **kwargs):
        out = dask.threaded.get(dsk, keys, **kwargs)
        pulled.append(sum(np.asarray(x).nbytes for x in flatten(out)))
        return out

    with dask.config.set(scheduler=get):
        write_report(tmp_path / "report", product=product, truth=truth)
    assert pulled and max(pulled) < one_variable / 4, (max(pulled), one_variable)


def test_scores_per_era(product, truth):
    """Per-era medians: the eras of the sensor changes, each scored on its own times."""
    s = scores_against_truth(product, truth, sensor_changes=SENSOR_CHANGES)
    eras = s["eras"]
    assert len(eras) == len(SENSOR_CHANGES) + 1
    p, t = product["sm"], truth["sm_l1"]
    for e in eras.values():
        sl = slice(e["start"], e["end"])
        pe, te = p.sel(time=sl).values.astype(float), t.sel(time=sl).values.astype(float)
        r = [_numpy_r(pe[:, j, i], te[:, j, i]) for j in range(pe.shape[1])
             for i in range(pe.shape[2])]
        assert e["R"] == pytest.approx(np.median(r), rel=1e-6)
        assert e["bias"] == pytest.approx(np.nanmean(pe - te), abs=1e-6)
    # the factory's era biases +0.02, 0, -0.01
    assert [e["bias"] for e in eras.values()] == pytest.approx([0.02, 0.0, -0.01], abs=0.003)
    # explicit eras: labels and first days as given, the first from the record's start
    first = str(pd.Timestamp(TIMES[0]).date())
    e2 = scores_against_truth(product, truth, eras={"early": None, "late": "2011-01-01"})["eras"]
    assert list(e2) == ["early", "late"] and e2["early"]["start"] == first
    assert e2["early"]["end"] < "2011-01-01" <= e2["late"]["start"]


def test_station_scores_by_era():
    from casm_cloud.report.scores import station_scores_by_era

    times = pd.date_range("2010-01-01", periods=200, freq="3D")
    rng = np.random.default_rng(0)
    ref = rng.normal(0.25, 0.05, (3, times.size))
    prod = ref + 0.01 + rng.normal(0, 0.01, ref.shape)
    pairs = xr.Dataset({"product": (("station", "time"), prod),
                        "reference": (("station", "time"), ref)},
                       coords={"station": ["a", "b", "c"], "time": times})
    out = station_scores_by_era(pairs, {"one": None, "two": "2011-01-01"})
    assert list(out) == ["one", "two"]
    for e in out.values():
        assert e["n_stations"] == 3 and e["R"] > 0.9
        assert e["bias"] == pytest.approx(0.01, abs=0.004)


# ---- the SoMo.ml page and its figure functions (notebooks/03_somo_run.ipynb calls them) ----
SOMO_TIMES = pd.date_range("2012-07-01", periods=40, freq="D")


@pytest.fixture(scope="module")
def somo_product():
    rng = np.random.default_rng(9)
    shape = (SOMO_TIMES.size, 3, 4)
    coords = {"time": SOMO_TIMES, "y": [38.5, 38.25, 38.0], "x": [-99.0, -98.75, -98.5, -98.25]}
    data = {}
    for k, n in enumerate(("sm_l1", "sm_l2", "sm_l3")):
        data[n] = (("time", "y", "x"), (0.15 + 0.05 * k + 0.03 * rng.random(shape))
                   .astype(np.float32))
        data[f"structural_uncertainty_l{k + 1}"] = (("time", "y", "x"),
                                                    (0.01 * rng.random(shape)).astype(np.float32))
    ds = xr.Dataset(data, coords=coords)
    ds = ds.assign_coords(lat=("y", ds.y.values), lon=("x", ds.x.values))
    return ds.chunk({"time": 16})


@pytest.fixture(scope="module")
def somo_targets():
    """Three station cells; cell 7 has the most layer-1 days; targets before the product too."""
    rng = np.random.default_rng(10)
    time = pd.date_range("2012-06-01", "2012-08-31", freq="D")
    values = 0.2 + 0.05 * rng.random((3, time.size))
    values[0, ::2] = np.nan
    values[2, ::3] = np.nan
    ds = xr.Dataset({n: (("cell", "time"), values + 0.01 * k)
                     for k, n in enumerate(("sm_l1", "sm_l2", "sm_l3"))},
                    coords={"cell": [3, 7, 9], "time": time, "cell_y": ("cell", [0, 2, 1]),
                            "cell_x": ("cell", [1, 3, 0]),
                            **{f"n_stations_sm_l{k}": ("cell", [1, 2, 1]) for k in (1, 2, 3)}})
    return ds


def _somo_tables():
    cv = pd.DataFrame({"layer": ["sm_l1"] * 3 + ["sm_l2"] * 3, "fold": ["0", "1", "mean"] * 2,
                       "n_cells": [2, 1, 3, 2, 1, 3], "R": [0.7, 0.5, 0.6, 0.4, 0.6, 0.5],
                       "NRMSE": [0.1, 0.2, 0.15, 0.2, 0.2, 0.2],
                       "anomaly_R": [0.3, 0.5, 0.4, 0.1, 0.3, 0.2]})
    stations = pd.DataFrame({"layer": ["sm_l1"] * 3, "cell": [3, 7, 9], "cell_y": [0, 2, 1],
                             "cell_x": [1, 3, 0], "R": [0.8, 0.6, 0.4], "n": [20, 40, 27]})
    truth = pd.DataFrame({"layer": ["sm_l1"], "n_cells": [9], "R": [0.85], "NRMSE": [0.1],
                          "anomaly_R": [0.5]})
    return cv, stations, truth


def test_somo_aggregates_equal_numpy(somo_product):
    from casm_cloud.report import somo

    agg = somo.aggregates(somo_product)
    assert somo.layers_of(somo_product) == ["sm_l1", "sm_l2", "sm_l3"]
    raw = somo_product.load()
    for n in ("sm_l1", "sm_l3"):
        np.testing.assert_allclose(agg[f"{n}_mean"], raw[n].values.mean(0), rtol=1e-6)
        np.testing.assert_allclose(agg[f"{n}_zonal"], raw[n].values.mean(2), rtol=1e-6)
        np.testing.assert_allclose(agg[f"{n}_series"], raw[n].values.mean((1, 2)), rtol=1e-6)
        u = raw[f"structural_uncertainty_{n[-2:]}"].values
        np.testing.assert_allclose(agg[f"{n}_unc"], u.mean(0), rtol=1e-6)
        np.testing.assert_allclose(agg[f"{n}_unc_series"], u.mean((1, 2)), rtol=1e-6)
    only = somo.aggregates(somo_product[["sm_l2"]])
    assert set(only) == {"sm_l2_mean", "sm_l2_zonal", "sm_l2_series"}  # no uncertainty


def test_somo_station_series_draws_the_cells_product_and_target(somo_product, somo_targets,
                                                                tmp_path, monkeypatch):
    from casm_cloud.report import figures as fg
    from casm_cloud.report import somo

    assert somo.station_cell(somo_targets) == 7  # no gaps in its layer-1 series
    drawn = {}
    save = fg._save

    def keep(fig, out, name):
        drawn[name] = [[(line.get_label(), np.asarray(line.get_ydata(), float))
                        for line in ax.get_lines()] for ax in fig.axes]
        return save(fig, out, name)

    monkeypatch.setattr(fg, "_save", keep)
    name = somo.station_series_figure(tmp_path, somo_product, somo_targets, 9)
    assert name == "somo_station_9.png" and (tmp_path / name).is_file()
    raw = somo_product.load()
    for k, axis in enumerate(drawn[name]):
        n = f"sm_l{k + 1}"
        lines = dict(axis)
        # cell 9 is row 1, column 0 of the window; the target over the product's days
        np.testing.assert_allclose(lines[f"product {n}"], raw[n].values[:, 1, 0])
        want = somo_targets[n].sel(cell=9).reindex(time=SOMO_TIMES).values
        np.testing.assert_allclose(lines["ISMN target (rescaled)"], want, equal_nan=True)


def test_write_somo_report_page_figures_and_tables(somo_product, somo_targets, tmp_path):
    from casm_cloud.report import write_somo_report

    cv, stations, truth = _somo_tables()
    index = write_somo_report(tmp_path / "report", product=somo_product, cv=cv,
                              stations=stations, truth=truth, targets=somo_targets)
    page = index.read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    assert images == ["somo_maps.png", "somo_hovmoller.png", "somo_uncertainty.png",
                      "somo_cv.png", "somo_stations.png", "somo_station_7.png"]
    for name in images:
        assert (tmp_path / "report" / name).stat().st_size > 1000
    for head in ("Cross validation", "Scores against the simulated truth", "Station validation",
                 "Structural uncertainty", "Station cell 7 against the product"):
        assert head in page
    back = pd.read_csv(tmp_path / "report" / "somo_cv.csv", dtype={"fold": str})
    pd.testing.assert_frame_equal(back, cv)
    # without tables or targets: the product's figures only
    bare = write_somo_report(tmp_path / "bare", product=somo_product).read_text()
    assert re.findall(r"<img src='([^']+)'", bare) == ["somo_maps.png", "somo_hovmoller.png",
                                                       "somo_uncertainty.png"]
