"""Stages in pieces (casm_cloud.pieces): each piece a bounded graph written by region and
recorded; a run killed mid-way resumes at the first unwritten piece to the same bits; the
largest piece's graph does not grow with the record; the SoMo.ml forcing stage runs so."""

from __future__ import annotations

import dask.array as dsa
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from _tiny import copy_run

from casm_cloud import pieces, storage
from casm_cloud.recipes import run_recipe


def _record(n_days: int) -> xr.Dataset:
    """A lazy daily record: 4 x 5 cells, a cumulative sum along time (a graph spanning days)."""
    t = pd.date_range("2001-01-01", periods=n_days, freq="D").values
    x = dsa.random.RandomState(0).standard_normal((n_days, 4, 5), chunks=(30, 4, 5))
    return xr.Dataset({"a": (("time", "y", "x"), x.astype(np.float32)),
                       "b": (("time", "y", "x"), (x * 2).astype(np.float32))},
                      coords={"time": t, "y": np.arange(4), "x": np.arange(5)},
                      attrs={"title": "test"})


def _build(record: xr.Dataset, fail_at: int | None = None):
    calls = []

    def build(s: slice) -> dict:
        calls.append(s)
        if fail_at is not None and s.start // 90 == fail_at:
            raise RuntimeError("killed")
        part = record.isel(time=s).chunk({"time": 90})
        return {"one": part[["a"]], "two": part[["b"]]}

    return build, calls


def _write(tmp, record, build, client=None):
    urls = {"one": str(tmp / "one.zarr"), "two": str(tmp / "two.zarr")}
    res = pieces.write_pieces(build, urls, record["time"].values, piece_days=90,
                              config_hash="h1", client=client)
    return res, urls


@pytest.mark.parametrize("with_client", [False, True])
def test_killed_mid_way_resumes_at_the_first_unwritten_piece_to_the_same_bits(
        tmp_path, with_client, client):
    record = _record(400)        # pieces of 90 days: 5 pieces, the last 40 days
    c = client if with_client else None
    res, want = _write(tmp_path / "whole", record, _build(record)[0], c)
    assert res["pieces"] == 5 and res["computed"] == 5 and res["skipped"] == 0
    build, _ = _build(record, fail_at=3)
    with pytest.raises(RuntimeError, match="killed"):
        _write(tmp_path / "killed", record, build, c)
    for name in ("one", "two"):  # not finished: refused as a complete store
        assert not storage.store_state(str(tmp_path / "killed" / f"{name}.zarr"))["complete"]
    build, calls = _build(record)
    res, got = _write(tmp_path / "killed", record, build, c)
    # pieces 0..2 were recorded before the kill (at most IN_FLIGHT in flight are lost)
    assert res["skipped"] >= 3 - pieces.IN_FLIGHT and res["computed"] + res["skipped"] == 5
    assert res["skipped"] == 3 or with_client
    for name, var in (("one", "a"), ("two", "b")):
        a = storage.open_zarr(want[name], require_complete=True)[var].values
        b = storage.open_zarr(got[name], require_complete=True)[var].values
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, record[var].values)


def test_a_store_of_another_configuration_is_written_anew(tmp_path):
    record = _record(200)
    urls = {"one": str(tmp_path / "one.zarr"), "two": str(tmp_path / "two.zarr")}
    pieces.write_pieces(_build(record)[0], urls, record["time"].values, piece_days=90,
                        config_hash="h1")
    res = pieces.write_pieces(_build(record)[0], urls, record["time"].values, piece_days=90,
                              config_hash="h2")
    assert res["computed"] == 3 and res["skipped"] == 0
    assert storage.store_state(urls["one"])["config_hash"] == "h2"


def test_the_largest_piece_does_not_grow_with_the_record(tmp_path):
    sizes = {}
    for years in (2, 8):
        record = _record(365 * years)
        res, _ = _write(tmp_path / str(years), record, _build(record)[0])
        sizes[years] = res["largest_graph"]
        print(f"{years}-year record: {res['pieces']} pieces, largest graph "
              f"{res['largest_graph']} tasks")
    assert sizes[8] <= 1.05 * sizes[2], sizes


def test_somo_forcing_runs_in_pieces_and_resumes_where_it_was_killed(somo_reference, client,
                                                                     tmp_path, monkeypatch):
    from casm_cloud.recipes.somo import ingest

    reference = somo_reference[0]
    recipe = copy_run(reference, tmp_path)
    for name in ("features.zarr", "era5_layers.zarr"):
        storage.remove(str(tmp_path / "run" / "forcing" / name))
    storage.remove(str(tmp_path / "run" / "forcing" / "_stage.json"))
    real, calls = ingest._forcing, []

    def dies_on_the_second_piece(p, era5, start, end, *chunk_days):
        calls.append(start)
        # the piece size's probe, piece 0 (the template's and the first write), then piece 1
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(p, era5, start, end, *chunk_days)

    monkeypatch.setattr(ingest, "_forcing", dies_on_the_second_piece)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, until="forcing", client=client, progress=False)
    monkeypatch.setattr(ingest, "_forcing", real)
    ctx = run_recipe(recipe, until="forcing", client=client, progress=True)
    assert "forcing" in ctx.timings
    for name in ("features.zarr", "era5_layers.zarr"):
        got = storage.open_zarr(str(tmp_path / "run" / "forcing" / name), require_complete=True)
        want = storage.open_zarr(f"{reference.run_root}/forcing/{name}", require_complete=True)
        assert got.sizes["time"] > ingest.PIECE_DAYS  # several pieces
        xr.testing.assert_identical(got.load(), want.load())
        record = storage.ChunkRecord(str(tmp_path / "run" / "forcing" / name)).done()
        assert len(record) == -(-got.sizes["time"] // ingest.PIECE_DAYS)


def test_a_piece_holds_as_many_steps_as_the_task_budget_allows():
    calls = []

    def tasks_of(n):
        calls.append(n)
        return 40 + 100 * n            # a fixed part and 100 tasks a step

    assert pieces.steps_per_piece(tasks_of, 365, budget=10_000) == 95   # // (840 / 8)
    assert calls == [8]                                                  # one probe
    assert pieces.steps_per_piece(tasks_of, 30, budget=10 ** 9) == 30   # at most `most`
    assert pieces.steps_per_piece(tasks_of, 365, budget=1) == 1         # at least one


def test_somo_forcing_pieces_stay_within_the_task_budget(somo_reference, client, tmp_path,
                                                         monkeypatch):
    from casm_cloud.recipes.somo import ingest

    reference = somo_reference[0]
    recipe = copy_run(reference, tmp_path)
    for name in ("features.zarr", "era5_layers.zarr", "_stage.json"):
        storage.remove(str(tmp_path / "run" / "forcing" / name))
    p, start = ingest.forcing_params(recipe), recipe.periods.training.start
    year = ingest._forcing(p, ingest._era5(p, recipe.periods.training.end), start,
                           start.replace(year=start.year + 1), 365)
    # the estimate scales an 8-day probe, whose fixed part (coordinates) is most of a tiny
    # window's graph: 3 years' worth of tasks makes pieces of about 70 days here
    budget = 3 * pieces.graph_tasks(*year)
    monkeypatch.setattr(pieces, "TASK_BUDGET", budget)
    real, seen = ingest.write_pieces, {}

    def spy(*args, **kwargs):
        seen.update(real(*args, **kwargs))
        return seen

    monkeypatch.setattr(ingest, "write_pieces", spy)
    ctx = run_recipe(recipe, until="forcing", client=client, progress=False)
    assert "forcing" in ctx.timings
    for name in ("features.zarr", "era5_layers.zarr"):
        url = str(tmp_path / "run" / "forcing" / name)
        got = storage.open_zarr(url, require_complete=True)
        want = storage.open_zarr(f"{reference.run_root}/forcing/{name}", require_complete=True)
        days = got[next(iter(got.data_vars))].chunks[0][0]
        assert days < 365 // 2                                   # smaller pieces ...
        assert len(storage.ChunkRecord(url).done()) == -(-got.sizes["time"] // days)
        xr.testing.assert_equal(got.load(), want.load())        # ... the same values
    assert seen["largest_graph"] <= budget, (seen, budget)
