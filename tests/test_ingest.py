"""Ingest reads its input once: the aggregate stage reduces the n-day means it writes to
the seasonal fit's partial sums, and the seasonal stage finishes the fit from them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from casm_cloud import storage
from casm_cloud.config import recipe_from_dict
from casm_cloud.recipes import casm, runner
from casm_cloud.recipes.stage import Context
from casm_cloud.seasonal import SUMS_KBUF, open_sums, seasonal_params
from casm_cloud.seasonal.fit import METHODS

START, END, UNTIL = "2015-05-01", "2015-09-30", "2015-12-31"
STAGES = casm.STAGES[:2]  # aggregate, seasonal


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    from casm_cloud.simulate import write_simulation

    out = tmp_path_factory.mktemp("sources")
    write_simulation(str(out), region="tiny", start=START, end=UNTIL, seed=3, amsre_ease1=True)
    return out


def _recipe(sources: Path, root: Path, **seasonal):
    return recipe_from_dict({
        "name": "ingest", "run_root": str(root / "run"),
        "sources": {"catalog": str(sources / "catalog.yaml"), "truth": "truth", "era5": "era5",
                    "amsre": "amsr2"},  # no AMSR-E after 2011: its channels from AMSR2
        "grid": {"name": "M25", "region": "tiny"},
        "period": {"start": START, "end": END},
        "predict": {"chunks": {"time": 32, "y": 4, "x": 8}},
        # whole bins only: swath gaps leave some pixels fewer than 40 bins (the median)
        "aggregate": {"min_count": 3},
        "seasonal": seasonal,
    })


def _ctx(recipe) -> Context:
    return Context(recipe.run_root, dict(recipe.storage_options), progress=False)


def _stored(recipe, stage, name) -> xr.Dataset:
    return storage.open_zarr(f"{recipe.run_root}/{stage}/{name}", require_complete=True)


def _refit(recipe, kind, min_obs=40) -> xr.Dataset:
    channels = casm._channels(recipe, kind)
    return seasonal_params(_stored(recipe, "aggregate", f"{kind}.zarr")[channels], channels,
                           min_obs=min_obs).compute()


def _assert_same(got: xr.Dataset, want: xr.Dataset) -> None:
    for name in want.data_vars:
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)
    assert [str(v) for v in got["variable"].values] == [str(v) for v in want["variable"].values]


@pytest.fixture(scope="module")
def ran(sources, tmp_path_factory):
    """aggregate + seasonal, counting the n-day mean blocks computed."""
    import casm_cloud.aggregate as agg

    recipe = _recipe(sources, tmp_path_factory.mktemp("run"))
    calls = []
    real = agg._bin_mean_block

    def counting(block, *a, **k):
        calls.append(block.shape)
        return real(block, *a, **k)

    agg._bin_mean_block = counting
    try:
        ctx = runner.run_stages(STAGES, recipe, _ctx(recipe))
    finally:
        agg._bin_mean_block = real
    return recipe, ctx, calls


def test_parameters_equal_a_fit_of_the_stored_aggregates(ran):
    recipe, ctx, _ = ran
    assert list(ctx.timings) == ["aggregate", "seasonal"]
    methods = set()
    for kind in casm._kinds(recipe):
        got = _stored(recipe, "seasonal", f"{kind}.zarr").compute()
        want = _refit(recipe, kind)
        _assert_same(got, want)
        methods |= set(np.unique(want["method"].values).tolist())
        assert open_sums(f"{recipe.run_root}/aggregate/{kind}_seasonal_sums.zarr") is not None
    # sine fits, and the median fallback (pixels with fewer than 40 of the 51 bins)
    assert {METHODS[m] for m in methods} >= {"sine", "median"}, methods


def test_the_means_are_computed_once(ran, monkeypatch):
    """The stage (means written + sums) computes each n-day mean block as often as a plain
    computation of the means does: the input is read once."""
    import casm_cloud.aggregate as agg

    recipe, _, calls = ran
    plain = []
    real = agg._bin_mean_block
    monkeypatch.setattr(agg, "_bin_mean_block",
                        lambda block, *a, **k: plain.append(block.shape) or real(block, *a, **k))
    p = casm.aggregate_params(recipe)
    cat = casm._catalog(p)
    for kind in p["entries"]:
        got = _stored(recipe, "aggregate", f"{kind}.zarr").compute()
        # the stage reads the days of its complete bins only (a piece's days)
        end = (got["time"].values[-1].astype("datetime64[D]")
               + np.timedelta64(p["n_days"] - 1, "D")).astype(dt.date)
        want = casm._aggregated(p, cat, kind, p["start"], end).compute()
        for name in want.data_vars:  # written by the tasks that sum them: the same means
            np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)
    assert len(plain) > 0 and sorted(calls) == sorted(plain)


def test_seasonal_stage_does_not_read_the_aggregates(ran, monkeypatch):
    recipe, _, _ = ran
    import casm_cloud.seasonal as seasonal

    def refuse(*a, **k):
        raise AssertionError("refitted from the aggregates")

    monkeypatch.setattr(seasonal, "seasonal_params", refuse)
    ctx = _ctx(recipe)
    ctx.stage = "seasonal"
    casm.run_seasonal(ctx, casm.seasonal_params(recipe))  # finished from the sums only
    # a smaller min_obs is served by the stored values too
    p = casm.seasonal_params(recipe)
    p["min_obs"] = 25
    ctx.stage = "seasonal_small"
    casm.run_seasonal(ctx, p)
    monkeypatch.undo()
    for kind in casm._kinds(recipe):
        _assert_same(_stored(recipe, "seasonal_small", f"{kind}.zarr").compute(),
                     _refit(recipe, kind, min_obs=25))


def test_a_min_obs_above_the_stored_values_fits_from_the_aggregates(ran):
    recipe, _, _ = ran
    ctx = _ctx(recipe)
    ctx.stage = "seasonal_large"
    p = casm.seasonal_params(recipe)
    p["min_obs"] = SUMS_KBUF + 12
    casm.run_seasonal(ctx, p)
    for kind in ("smap", "smos"):
        _assert_same(_stored(recipe, "seasonal_large", f"{kind}.zarr").compute(),
                     _refit(recipe, kind, min_obs=SUMS_KBUF + 12))


def test_update_appends_aggregates_and_keeps_parameters_and_sums(sources, tmp_path):
    recipe = _recipe(sources, tmp_path)
    runner.run_stages(STAGES, recipe, _ctx(recipe))
    sums_url = f"{recipe.run_root}/aggregate/smap_seasonal_sums.zarr"
    before_sums = open_sums(sums_url)
    before = _stored(recipe, "seasonal", "smap.zarr").compute()
    n_before = _stored(recipe, "aggregate", "smap.zarr").sizes["time"]
    runner.update_stages(STAGES, recipe, _ctx(recipe), dt.date.fromisoformat(UNTIL),
                         recipe.period.end)
    assert _stored(recipe, "aggregate", "smap.zarr").sizes["time"] > n_before
    xr.testing.assert_identical(open_sums(sums_url), before_sums)  # not refitted
    xr.testing.assert_identical(_stored(recipe, "seasonal", "smap.zarr").compute(), before)
    # the seasonal stage run again on the grown aggregates fits all of them, as before
    ctx = _ctx(recipe)
    ctx.stage = "seasonal"
    casm.run_seasonal(ctx, casm.seasonal_params(recipe))
    _assert_same(_stored(recipe, "seasonal", "smap.zarr").compute(), _refit(recipe, "smap"))


# ----------------------------------------------------------------------- bad input
def _one_entry_catalog(tmp_path, adapter, urlpath, **options):
    from casm_cloud import catalog

    return catalog.open_catalog(catalog.write_catalog(
        {"src": catalog.make_entry(adapter, urlpath, **options)}, str(tmp_path / "c.yaml")))


def test_bad_entries_are_one_clear_error_naming_entry_file_and_expectation(sources, tmp_path):
    from casm_cloud.catalog import CatalogError, SourceError, open_source
    from casm_cloud.errors import UserError
    from casm_cloud.grid import EASE2Grid

    tiny = EASE2Grid("M25").window_by_name("tiny")
    assert issubclass(SourceError, CatalogError) and issubclass(SourceError, UserError)
    # files missing
    cat = _one_entry_catalog(tmp_path, "smap_l3", str(tmp_path / "none" / "SMAP_*.h5"))
    with pytest.raises(SourceError, match=r"entry 'src' \(smap_l3 at .*none.*\): no file matches"):
        open_source(cat, "src", window=tiny, period=("2015-06-01", "2015-06-30"))
    # a provider file with the wrong variables
    bad = tmp_path / "SM_RE07_MIR_CDF3TA_20150601T000000_20150601T235959_700_001_7.DBL.nc"
    xr.Dataset({"BT_H": (("inc", "lat", "lon"), np.zeros((1, 2, 2), "f4"), {"units": "K"})},
               coords={"inc": [42.5], "lat": tiny.lat[:2][::-1], "lon": tiny.lon[:2]}
               ).to_netcdf(bad, engine="h5netcdf")
    cat = _one_entry_catalog(tmp_path, "smos_l3tb", str(bad))
    with pytest.raises(SourceError, match=r"entry 'src'.*DBL\.nc: missing variable 'BT_V'"):
        open_source(cat, "src", window=tiny)
    # ... or on the wrong grid
    grid = {f"BT_{p}": (("inc", "lat", "lon"), np.zeros((1, 2, 2), "f4"), {"units": "K"})
            for p in "HV"}
    grid.update({n: (("inc", "lat", "lon"), np.ones((1, 2, 2), "i2"))  # the RFI filter's
                 for n in ("Nviews", "Nb_RFI_Flags")})
    xr.Dataset(grid, coords={"inc": [42.5], "lat": [10.01, 10.3], "lon": [3.3, 3.6]}
               ).to_netcdf(bad, engine="h5netcdf")
    with pytest.raises(SourceError, match="not EASE2 M25 cell centres"):
        open_source(cat, "src", window=tiny)
    # a period outside what the store holds; a window outside the source's grid
    cat = _one_entry_catalog(tmp_path, "canonical_zarr", str(sources / "smap.zarr"), kind="smap")
    with pytest.raises(SourceError, match=r"entry 'src'.*no time step in 2030-01-01\.\.2030-01-31; "
                                          r"the store holds 2015-05-01\.\.2015-12-31"):
        open_source(cat, "src", window=tiny, period=("2030-01-01", "2030-01-31"))
    demo = EASE2Grid("M25").window_by_name("demo")
    with pytest.raises(SourceError, match=r"entry 'src'.*does not cover the window"):
        open_source(cat, "src", window=demo)
    # a request the adapter cannot serve: variables it does not have
    with pytest.raises(SourceError, match=r"entry 'src'.*\['tb_h'\] are not in the store"):
        open_source(cat, "src", variables=["tb_h"])


def test_a_bad_entry_stops_the_aggregate_stage_before_any_output(sources, tmp_path):
    import shutil

    from casm_cloud.catalog import SourceError

    broken = tmp_path / "sources"
    shutil.copytree(sources, broken)
    shutil.rmtree(broken / "smap.zarr")  # the catalog's last-but-one entry: files missing
    recipe = _recipe(broken, tmp_path)
    with pytest.raises(SourceError, match=r"catalog entry 'smap'.*smap\.zarr"):
        runner.run_stages(STAGES, recipe, _ctx(recipe))
    folder = Path(recipe.run_root) / "aggregate"
    assert not folder.exists() or not any(folder.glob("*.zarr"))


# ----------------------------------------------------------------------- the public store
@pytest.mark.network
def test_two_days_of_the_public_arco_store_over_the_demo_window():
    import socket

    from casm_cloud.catalog import open_catalog, open_source
    from casm_cloud.grid import EASE2Grid

    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=5).close()
    except OSError as err:
        pytest.skip(f"no route to storage.googleapis.com (public ARCO-ERA5): {err}")
    cat = open_catalog(str(Path(__file__).resolve().parents[1] / "catalogs" / "cloud.yaml"))
    demo = EASE2Grid("M25").window_by_name("demo")
    ds = open_source(cat, "era5_arco_google", window=demo, period=("2020-07-01", "2020-07-02"),
                     variables=["skt", "t2m"])
    assert ds.sizes["time"] == 2 and (ds.sizes["y"], ds.sizes["x"]) == demo.shape
    skt = ds["skt"].values
    assert np.isfinite(skt).all() and 270 < skt.mean() < 330  # summer, Great Plains
