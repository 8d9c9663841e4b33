"""The CASM aggregate stage in pieces (docs/architecture.md, "Stages in pieces"): the means
of the whole record in one graph, bit for bit; the seasonal sums merged over the pieces are
the record's, so the seasonal stage gets the fit of the stored aggregates; the largest
piece's graph does not grow with the record; a stage killed mid-way recomputes only the
pieces it had not recorded, to the same bits."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

from casm_cloud import pieces, storage
from casm_cloud.config import recipe_from_dict
from casm_cloud.recipes import casm, runner
from casm_cloud.recipes.casm import ingest
from casm_cloud.seasonal import (
    SeasonalError,
    lazy_sums,
    merge_sums,
    open_sums,
    params_from_sums,
    seasonal_params,
    sums_usable,
    write_sums,
)

START, UNTIL = "2015-01-01", "2015-12-31"
ENDS = {"half": "2015-06-30", "year": "2015-12-31"}  # the year's record is 2x the half's
STAGES = casm.STAGES[:2]  # aggregate, seasonal
CHUNK = 4  # time chunk of the stores (bins): pieces of ingest.PIECE_CHUNKS * 4 bins


@pytest.mark.parametrize("chunks_per_piece", [1, 2, 4])
def test_merged_sums_of_power_of_two_pieces_are_the_whole_series_bit_for_bit(
        tmp_path, chunks_per_piece):
    import pandas as pd

    rng = np.random.default_rng(0)
    n, chunk = 37 * 8 + 5, 8
    x = rng.normal(280, 5, (n, 3, 4)).astype("f4")
    x[rng.random(x.shape) < 0.9] = np.nan  # most pixels sparse: the buffers merge
    ds = xr.Dataset({"a": (("time", "y", "x"), x), "b": (("time", "y", "x"), 1.1 * x)},
                    coords={"time": pd.date_range("2011-01-01", periods=n, freq="3D")}
                    ).chunk({"time": chunk, "y": 2, "x": 2})
    (whole,) = dask.compute(lazy_sums(ds))
    size = chunks_per_piece * chunk
    urls = [str(tmp_path / f"{i}.zarr") for i in range(0, n, size)]
    for i, url in zip(range(0, n, size), urls, strict=True):
        write_sums(dask.compute(lazy_sums(ds.isel(time=slice(i, i + size))))[0], url)
    merged = merge_sums(open_sums(u) for u in urls)  # stored, read one at a time
    xr.testing.assert_identical(merged, whole)
    fitted = seasonal_params(ds, min_obs=20).compute()
    xr.testing.assert_identical(params_from_sums(merged, min_obs=20)[list(fitted.data_vars)],
                                fitted[list(fitted.data_vars)])
    with pytest.raises(SeasonalError, match="variables"):
        merge_sums([whole, dask.compute(lazy_sums(ds[["a"]]))[0]])


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    from casm_cloud.simulate import write_simulation

    out = tmp_path_factory.mktemp("sources")
    write_simulation(str(out), region="tiny", start=START, end=UNTIL, seed=3, amsre_ease1=True)
    return out


def _recipe(sources: Path, root: Path, end: str):
    return recipe_from_dict({
        "name": "pieces", "run_root": str(root / "run"),
        "sources": {"catalog": str(sources / "catalog.yaml"), "truth": "truth", "era5": "era5",
                    "amsre": "amsr2"},  # no AMSR-E after 2011: its channels from AMSR2
        "grid": {"name": "M25", "region": "tiny"},
        "period": {"start": START, "end": end},
        "predict": {"chunks": {"time": CHUNK, "y": 4, "x": 8}},
        "aggregate": {"min_count": 3},  # swath gaps: some pixels take the median fallback
    })


def _ctx(recipe, client=None) -> runner.Context:
    return runner.Context(recipe.run_root, dict(recipe.storage_options), client=client,
                          progress=False)


def _stored(recipe, stage: str, name: str) -> xr.Dataset:
    return storage.open_zarr(f"{recipe.run_root}/{stage}/{name}", require_complete=True)


def _sums(recipe, kind: str) -> xr.Dataset:
    return open_sums(f"{recipe.run_root}/aggregate/{kind}_seasonal_sums.zarr")


class _Spy:
    """Wraps ``pieces.write_pieces``: per source, its result and the pieces it computed."""

    def __init__(self, monkeypatch):
        self.real, self.results, self.computed = pieces.write_pieces, {}, {}
        monkeypatch.setattr(pieces, "write_pieces", self)

    def __call__(self, build, urls, times, *, on_piece, **kw):
        (kind,) = urls
        done = self.computed.setdefault(kind, [])

        def spied(i, value):
            done.append(i)
            on_piece(i, value)

        self.results[kind] = res = self.real(build, urls, times, on_piece=spied, **kw)
        return res


@pytest.fixture(scope="module")
def ran(sources, tmp_path_factory):
    """aggregate + seasonal of the half year and of the year, uninterrupted, serially."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for name, end in ENDS.items():
            recipe = _recipe(sources, tmp_path_factory.mktemp(name), end)
            spy = _Spy(mp)
            runner.run_stages(STAGES, recipe, _ctx(recipe))
            out[name] = recipe, spy.results
            mp.undo()
    return out


def _assert_whole_record(recipe, results: dict, kinds) -> None:
    """The stored means, sums and parameters are those of the record in one graph."""
    p = casm.aggregate_params(recipe)
    cat = casm._catalog(p)
    for kind in kinds:
        got = _stored(recipe, "aggregate", f"{kind}.zarr")
        assert results[kind]["pieces"] > 2
        assert len(storage.ChunkRecord(f"{recipe.run_root}/aggregate/{kind}.zarr").done()) \
            == results[kind]["pieces"]
        # the previous stage: the record's means in one graph (the days of its complete bins)
        end = (got["time"].values[-1].astype("datetime64[D]")
               + np.timedelta64(p["n_days"] - 1, "D")).astype(dt.date)
        want = casm._aggregated(p, cat, kind, p["start"], end)
        np.testing.assert_array_equal(got["time"].values, want["time"].values)
        for name in want.data_vars:
            np.testing.assert_array_equal(got[name].values, want[name].compute().values,
                                          err_msg=f"{kind} {name}")
        # the merged sums are those of the whole record in one pass, bit for bit
        (whole,) = dask.compute(lazy_sums(want))
        sums = _sums(recipe, kind)
        np.testing.assert_array_equal(sums["sums"].values, whole["sums"].values, err_msg=kind)
        kept = sums["sparse_index"].values >= 0  # not write_sums' row of an empty buffer
        np.testing.assert_array_equal(sums["sparse_index"].values[kept],
                                      whole["sparse_index"].values, err_msg=kind)
        if kept.any():
            np.testing.assert_array_equal(sums["sparse_values"].values,
                                          whole["sparse_values"].values, err_msg=kind)
        # and the seasonal stage finished from them the fit of the stored aggregates
        channels = casm._channels(recipe, kind)
        assert sums_usable(sums, got[channels], channels) is None
        fitted = seasonal_params(got[channels], channels).compute()
        params = _stored(recipe, "seasonal", f"{kind}.zarr").compute()
        for name in fitted.data_vars:
            np.testing.assert_array_equal(params[name].values, fitted[name].values,
                                          err_msg=f"{kind} {name}")


def test_pieces_give_the_whole_records_means_and_the_fit_of_the_stored_aggregates(ran):
    recipe, results = ran["year"]
    _assert_whole_record(recipe, results, casm.aggregate_params(recipe)["entries"])


def test_pieces_without_data_are_nan_bins_as_in_the_whole_record(sources, tmp_path,
                                                                 monkeypatch):
    """SMOS without data from 10 February to May: two pieces with no data at all (opened:
    none), the next without its first bins; the record's means and fit all the same."""
    import shutil

    copy = tmp_path / "sources"
    shutil.copytree(sources, copy)
    smos = storage.open_zarr(str(copy / "smos.zarr")).load()
    t = smos["time"].values
    gap = (t >= np.datetime64("2015-02-10")) & (t < np.datetime64("2015-06-01"))
    storage.write_dataset(smos.isel(time=~gap), str(copy / "smos.zarr"))
    recipe = _recipe(copy, tmp_path, ENDS["half"])
    calls = []
    real = ingest._aggregated
    monkeypatch.setattr(ingest, "_aggregated", lambda p, cat, kind, start, end: calls.append(
        (kind, real(p, cat, kind, start, end))) or calls[-1][1])
    spy = _Spy(monkeypatch)
    runner.run_stages(STAGES, recipe, _ctx(recipe))
    got = [ds for kind, ds in calls[len(casm._kinds(recipe)):] if kind == "smos"]
    assert sum(ds is None for ds in got) >= 2  # whole pieces without data
    monkeypatch.undo()
    _assert_whole_record(recipe, spy.results, ["smos"])
    means = _stored(recipe, "aggregate", "smos.zarr")["tb_h"]
    assert means.sel(time=slice("2015-02-10", "2015-05-27")).isnull().all()


def test_the_largest_piece_does_not_grow_with_the_record(ran):
    largest = {}
    for name in ENDS:
        recipe, results = ran[name]
        largest[name] = max(r["largest_graph"] for r in results.values())
        print(f"{name} ({recipe.period.start}..{recipe.period.end}): pieces "
              f"{ {k: r['pieces'] for k, r in results.items()} }, largest graph "
              f"{largest[name]} tasks")
    assert ran["year"][1]["smos"]["pieces"] == 2 * ran["half"][1]["smos"]["pieces"]
    assert largest["year"] <= 1.05 * largest["half"], largest


def _killed(value, start):
    raise RuntimeError(f"killed at the piece from bin {start}")


# serially (no client) the same pieces and record run as on a cluster: opt in with -m slow
@pytest.mark.parametrize("with_client", [pytest.param(False, marks=pytest.mark.slow), True])
def test_killed_mid_way_recomputes_only_unrecorded_pieces_to_the_same_bits(
        ran, sources, tmp_path, monkeypatch, with_client, client):
    want, results = ran["half"]
    recipe = _recipe(sources, tmp_path, ENDS["half"])
    kill_at, kind = 3, "smos"  # the first source (the others have not started), of 4 pieces
    assert results[kind]["pieces"] > kill_at
    real = lazy_sums

    def dies_at_piece_k(ds, *a, region=None, **k):
        out = real(ds, *a, region=region, **k)
        start = region["time"].start
        if start == kill_at * ingest.PIECE_CHUNKS * CHUNK and k["write_to"].endswith(
                f"/{kind}.zarr"):
            return dask.delayed(_killed)(out, start)
        return out

    c = client if with_client else None
    with monkeypatch.context() as mp:
        mp.setattr("casm_cloud.seasonal.lazy_sums", dies_at_piece_k)
        with pytest.raises(RuntimeError, match="killed"):
            runner.run_stages(STAGES, recipe, _ctx(recipe, c))
    assert not storage.store_state(f"{recipe.run_root}/aggregate/{kind}.zarr")["complete"]
    spy = _Spy(monkeypatch)
    runner.run_stages(STAGES, recipe, _ctx(recipe, c))
    n = spy.results[kind]["pieces"]
    recomputed = sorted(spy.computed[kind])
    if with_client:  # at most IN_FLIGHT pieces before k were lost with the kill
        assert recomputed[0] >= kill_at - pieces.IN_FLIGHT
        assert recomputed == list(range(recomputed[0], n))
    else:
        assert recomputed == list(range(kill_at, n))
        assert spy.results[kind]["skipped"] == kill_at
    for k in casm._kinds(recipe):
        for stage, name in (("aggregate", f"{k}.zarr"), ("seasonal", f"{k}.zarr")):
            xr.testing.assert_identical(_stored(recipe, stage, name).load(),
                                        _stored(want, stage, name).load())
        xr.testing.assert_identical(_sums(recipe, k), _sums(want, k))
