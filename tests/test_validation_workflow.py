"""`run_validation`: the one validation run of the CLI and the recipe, on fsspec URLs."""

from __future__ import annotations

import io
import uuid

import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud.cli import main
from casm_cloud.errors import InputError, UserError
from casm_cloud.validation import (
    StationSelectionError,
    ValidationError,
    read_ismn,
    run_validation,
    select_stations,
    validate_product,
)

RULES = {"min_obs": 30, "n_days": 3, "anchor": "2002-01-01", "good_fraction": 0.9,
         "depth": (0.0, 0.05)}
# the columns the recipe's report reads (casm_cloud/report.py)
REPORT_COLUMNS = {"product", "station_name", "network", "lat", "lon", "n", "R", "RMSE", "ubRMSE",
                  "bias", "NRMSE", "anomaly_R", "R2"}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from casm_cloud.simulate import write_simulation

    out = tmp_path_factory.mktemp("sim")
    write_simulation(str(out), region="tiny", start="2015-04-01", end="2016-03-31", seed=0,
                     n_stations=4)
    return out


@pytest.fixture()
def memory_root():
    root = f"memory://validation-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    path = root.removeprefix("memory://")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _ls(url: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(url)
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)) if fs.exists(path) \
        else []


def test_run_validation_writes_through_fsspec(sim, memory_root):
    out = f"{memory_root}/validate"
    table = run_validation({"CASM": str(sim / "smap.zarr")}, str(sim / "stations"), out,
                           **RULES)
    assert REPORT_COLUMNS <= set(table.columns) and len(table) == 4
    assert set(table["product"]) == {"CASM"} and (table["R"] > 0.3).all()
    names = _ls(out)
    for name in ("metrics.csv", "metrics_by_network.csv", "stations_removed.csv", "summary.md",
                 "boxplot_by_network.png", "scatter_CASM.png", "timeseries_CASM.png",
                 "map_R_CASM.png"):
        assert name in names, name
    fs, root = fsspec.core.url_to_fs(out)
    with fs.open(f"{root}/metrics.csv") as f:  # as the report stage reads it
        csv = pd.read_csv(f)
    assert list(csv["station_name"]) == list(table["station_name"])
    np.testing.assert_allclose(csv["R"], table["R"], rtol=1e-5)
    assert "4 station(s) kept" in fs.cat(f"{root}/summary.md").decode()


def test_run_validation_equals_the_recipe_stage_scores(sim, tmp_path):
    """The numbers the recipe stage computed with validate_product, through the one run."""
    from casm_cloud import storage

    product = storage.open_zarr(str(sim / "smap.zarr"))
    sel = select_stations(read_ismn(str(sim / "stations"), depth=RULES["depth"]),
                          good_fraction=0.9, min_obs=30, n_days=3, anchor="2002-01-01")
    expected = validate_product(product, sel, variable="sm")
    table = run_validation(str(sim / "smap.zarr"), sim / "stations", tmp_path / "v",
                           figures=False, **RULES)
    assert set(table["product"]) == {"smap.zarr"}  # one URL: named by its last part
    pd.testing.assert_frame_equal(table.drop(columns="product"),
                                  expected.drop(columns="product"))
    assert not list((tmp_path / "v").glob("*.png"))


def test_product_at_a_url_with_storage_options(sim, memory_root):
    """Products are read through fsspec with the options given (here: a memory store)."""
    url = f"{memory_root}/product.zarr"
    xr.open_zarr(sim / "smap.zarr", consolidated=False).to_zarr(url, zarr_format=3,
                                                                consolidated=False)
    table = run_validation({"p": url}, str(sim / "stations"), f"{memory_root}/out",
                           storage_options={}, figures=False, **RULES)
    assert len(table) == 4 and "metrics.csv" in _ls(f"{memory_root}/out")


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_failed_validation_leaves_nothing_behind(sim, tmp_path, memory_root, where):
    out = str(tmp_path / "deep" / "validate") if where == "local" else f"{memory_root}/validate"
    stations = str(sim / "stations")
    with pytest.raises(StationSelectionError,
                       match=f"{stations}: no station left after the selection rules"):
        run_validation({"CASM": str(sim / "smap.zarr")}, stations, out,
                       **{**RULES, "min_obs": 100_000})
    missing = str(sim / "nothing.zarr")
    with pytest.raises(ValidationError,
                       match=f"no product could be validated against the ISMN stations in "
                             f"{stations}: CASM \\({missing}\\): product {missing} does not exist"):
        run_validation({"CASM": missing}, stations, out, **RULES)
    static = str(tmp_path / "static.zarr")
    xr.open_zarr(sim / "smap.zarr", consolidated=False).isel(time=0, drop=True).to_zarr(
        static, zarr_format=3, consolidated=False)
    with pytest.raises(UserError, match="no 'time' dimension"):
        run_validation({"CASM": static}, stations, out, **RULES)
    with pytest.raises(UserError, match="does not exist"):
        run_validation({"CASM": str(sim / "smap.zarr")}, str(tmp_path / "no-ismn"), out,
                       **RULES)
    assert _ls(out) == []
    if where == "local":
        assert not (tmp_path / "deep").exists()


def test_a_failure_while_copying_removes_what_was_copied(sim, memory_root, monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    calls = []
    put_file = MemoryFileSystem.put_file

    def failing(self, lpath, rpath, **kw):
        calls.append(rpath)
        if len(calls) == 3:
            raise OSError("simulated network failure")
        return put_file(self, lpath, rpath, **kw)

    monkeypatch.setattr(MemoryFileSystem, "put_file", failing)
    with pytest.raises(OSError, match="simulated network failure"):
        run_validation({"CASM": str(sim / "smap.zarr")}, str(sim / "stations"),
                       f"{memory_root}/validate", figures=False, **RULES)
    assert _ls(f"{memory_root}/validate") == [] and len(calls) == 3


def test_stations_on_an_object_store_are_fetched_once(sim, tmp_path, memory_root):
    fs = fsspec.filesystem("memory")
    fs.put(str(sim / "stations"), f"{memory_root}/ismn", recursive=True)
    here = run_validation({"CASM": str(sim / "smap.zarr")}, str(sim / "stations"),
                          str(tmp_path / "a"), figures=False, **RULES)
    there = run_validation({"CASM": str(sim / "smap.zarr")}, f"{memory_root}/ismn",
                           str(tmp_path / "b"), figures=False, **RULES)
    pd.testing.assert_frame_equal(here, there)


def test_an_existing_output_folder_keeps_its_other_files(sim, tmp_path):
    out = tmp_path / "validate"
    out.mkdir()
    (out / "_stage.json").write_text("{}")
    run_validation({"CASM": str(sim / "smap.zarr")}, str(sim / "stations"), str(out),
                   figures=False, **RULES)
    assert (out / "_stage.json").read_text() == "{}" and (out / "metrics.csv").is_file()


def test_stations_and_output_must_be_usable(sim, tmp_path, memory_root):
    with pytest.raises(UserError, match="stations memory://nowhere/ismn.zip: no ISMN folder"):
        run_validation({"CASM": str(sim / "smap.zarr")}, "memory://nowhere/ismn.zip",
                       f"{memory_root}/v", **RULES)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        run_validation({"CASM": str(sim / "smap.zarr")}, str(sim / "stations"), str(afile),
                       **RULES)
    with pytest.raises(ValidationError, match="2 variables for 1 products"):
        run_validation({"CASM": str(sim / "smap.zarr")}, str(sim / "stations"), str(tmp_path),
                       variables=["sm", "sm"], **RULES)
    with pytest.raises(KeyError, match="quality rules for unknown products"):
        run_validation({"CASM": str(sim / "smap.zarr")}, str(sim / "stations"), str(tmp_path),
                       where={"other": {"flag": [0]}}, **RULES)
    # file:// URLs are local paths
    table = run_validation({"CASM": f"file://{sim / 'smap.zarr'}"}, f"file://{sim / 'stations'}",
                           f"file://{tmp_path / 'fileurl'}", figures=False, **RULES)
    assert len(table) == 4 and (tmp_path / "fileurl" / "metrics.csv").is_file()


def test_cli_validate_on_simulated_data_and_a_failure_leaves_no_folder(sim, tmp_path, capsys):
    out = tmp_path / "val"
    rc = main(["validate", f"smap={sim / 'smap.zarr'}", "--stations", str(sim / "stations"),
               "--min-obs", "30", "--out", str(out), "--no-figures"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ubRMSE" in printed and f"written: {out}/metrics.csv" in printed
    assert len(pd.read_csv(out / "metrics.csv")) == 4
    rc = main(["validate", f"smap={sim / 'smap.zarr'}", "--stations", str(sim / "stations"),
               "--min-obs", "100000", "--out", str(tmp_path / "failed")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("casm-cloud: error: ") and err.count("\n") == 1
    assert f"{sim / 'stations'}: no station left" in err
    assert not (tmp_path / "failed").exists()


def test_metrics_csv_round_trips_into_the_report_table(sim, tmp_path):
    run_validation({"CASM": str(sim / "smap.zarr")}, str(sim / "stations"), str(tmp_path),
                   figures=False, **RULES)
    text = (tmp_path / "metrics.csv").read_text()
    table = pd.read_csv(io.StringIO(text))
    assert REPORT_COLUMNS <= set(table.columns)
    assert table["n"].dtype.kind == "i" and table["R"].dtype.kind == "f"
