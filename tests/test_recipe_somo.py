"""The SoMo.ml recipe end to end on a tiny ERA5 0.25° window on a LocalCluster: the product,
the CV table, the report and export; a kill mid-prediction and a lost training task resume to
the same bits; ``update`` appends new days and is idempotent; bad input is one clear error."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from _tiny import SOMO_END, SOMO_LAYERS, SOMO_UNTIL, SOMO_VARS
from _tiny import copy_run as _copy
from _tiny import product as _product
from _tiny import somo_raw as _raw

from casm_cloud import storage
from casm_cloud.config import recipe_from_dict
from casm_cloud.errors import UserError
from casm_cloud.recipes import run_recipe, update_recipe
from casm_cloud.recipes.runner import stage_state

STAGES = ("forcing", "statics", "targets", "train", "predict", "validate", "importance", "report",
          "export")
LAYERS, VARS, END, UNTIL = SOMO_LAYERS, SOMO_VARS, SOMO_END, SOMO_UNTIL


def test_recipe_end_to_end(somo_reference):
    recipe, ctx = somo_reference
    assert list(ctx.timings) == list(STAGES)
    product = _product(recipe)
    assert set(VARS) <= set(product.data_vars)
    assert product.time.values[0] == np.datetime64("2012-07-01")
    assert product.time.values[-1] == np.datetime64(END)
    for n in LAYERS:
        v = product[n]
        assert v.attrs["units"] == "m3 m-3" and "standard_name" in v.attrs
        assert np.isfinite(v.values).all() and (v.values >= 0).all()
        assert (product[f"structural_uncertainty_{n[-2:]}"].values >= 0).all()
    # per layer: every fold and their mean
    cv = ctx.summary["cv"]
    assert set(cv["layer"]) == set(LAYERS)
    assert sorted(set(cv["fold"])) == ["0", "1", "2", "mean"]
    assert np.isfinite(cv[cv["fold"] == "mean"][["R", "NRMSE", "anomaly_R"]].values).all()
    truth = ctx.summary["truth"].set_index("layer")
    assert (truth["n_cells"] > 10).all()
    # the paper's comparison with ERA5's own layers: every cell of the window, each layer
    era5 = ctx.summary["era5"].set_index("layer")
    assert list(era5.index) == list(LAYERS) and (era5["n_cells"] == 49).all()
    # the tiny run's networks take 8 Adam steps: only layer 1 (rain in, wetter out) has
    # learnt a sign by then
    assert era5["R"].between(-1, 1).all() and era5.loc["sm_l1", "R"] > 0, era5
    files = sorted(p.name for p in Path(recipe.run_root, "somo").glob("*.nc"))
    assert files == [f"SoMo.ml_v1_{n}_2012.nc" for n in LAYERS]
    nc = xr.open_dataset(Path(recipe.run_root, "somo", "SoMo.ml_v1_sm_l2_2012.nc"))
    assert {"sm_l2", "structural_uncertainty_l2"} <= set(nc.data_vars)
    for attrs in (product.attrs, nc.attrs):  # which precision made the values, and its check
        assert attrs["casm_precision"] in ("fp32", "bf16", "bf16,fp32"), attrs
        assert attrs["casm_precision_tolerance"] == 1e-3
        assert attrs["casm_precision_error"] <= 1e-3
    page = (Path(recipe.output("report")) / "index.html").read_text()
    assert "Cross validation" in page and "somo_maps.png" in page
    assert "Against ERA5&#x27;s own layers" in page or "Against ERA5's own layers" in page
    # the trained networks are SoMo.ml checkpoints the library predicts with
    from casm_cloud.somo.predict import load_spec

    spec = load_spec(str(Path(recipe.run_root, "train", "sm_l3", "seed_1")))
    assert spec.dynamic[-2:] == ("sm_l1", "sm_l2") and spec.window == 20
    # each layer learns its target in ERA5's units at the cell (docs/science.md, "The
    # target's units"): the grid's prediction (statics' maps) is the training's at the cells
    assert spec.reference == ("era5_mean_sm_l3", "era5_std_sm_l3")
    from casm_cloud.somo.predict import predict

    statics = storage.open_zarr(recipe.run_root + "/statics/statics.zarr")
    feats = storage.open_zarr(recipe.run_root + "/forcing/features.zarr")
    era5 = storage.open_zarr(recipe.run_root + "/forcing/era5_layers.zarr")
    c = recipe.periods.climatology
    np.testing.assert_allclose(statics["era5_mean_sm_l1"].values, era5["sm_l1"].sel(
        time=slice(str(c.start), str(c.end))).mean("time").values, rtol=1e-5)
    seed = str(Path(recipe.run_root, "train", "sm_l1", "seed_1"))
    tg = storage.open_zarr(recipe.run_root + "/targets/targets.zarr")
    cells = storage.open_zarr(seed + "/cells.zarr")["sm_l1"]
    days = slice(str(recipe.periods.training.start), str(recipe.periods.training.end))
    grid = predict(seed, feats, statics, days.start, days.stop)["sm_l1"].isel(
        y=xr.DataArray(tg["cell_y"].values, dims="cell"),
        x=xr.DataArray(tg["cell_x"].values, dims="cell")).transpose("cell", "time")
    np.testing.assert_allclose(grid.values, cells.sel(time=days).values, atol=2e-5)
    sensors = storage.open_zarr(recipe.run_root + "/targets/targets.zarr")
    assert int(sensors["n_stations_sm_l1"].max()) >= 1


def test_killed_run_resumes_to_the_same_bits(somo_reference, client, tmp_path):
    recipe = _copy(somo_reference[0], tmp_path)
    run = Path(recipe.run_root)
    # a lost training task: its model is trained again, to the same weights
    weights = (run / "train" / "sm_l2" / "seed_1" / "model.safetensors").read_bytes()
    (run / "train" / "sm_l2" / "seed_1" / "_done.json").unlink()
    for name in ("train", "predict", "validate", "importance", "report", "export"):
        (run / name / "_stage.json").unlink()
    shutil.rmtree(run / "predict")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    exe = Path(sys.executable).parent / "casm-cloud"
    proc = subprocess.Popen([str(exe), "run", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith("[casm-cloud] predict") and "running" in line:
                time.sleep(3)                     # some chunks of some seeds written
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert stage_state(recipe.run_root, "train") is not None
    assert stage_state(recipe.run_root, "predict") is None
    assert (run / "train" / "sm_l2" / "seed_1" / "model.safetensors").read_bytes() == weights
    ctx = run_recipe(recipe, client=client, progress=False)
    assert list(ctx.timings) == list(STAGES[STAGES.index("predict"):])
    got, want = _product(recipe), _product(somo_reference[0])
    for name in VARS:
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)


def test_update_appends_new_days_and_is_idempotent(somo_reference, client, tmp_path):
    recipe = _copy(somo_reference[0], tmp_path)
    before = _product(recipe)
    ctx = update_recipe(recipe, UNTIL, client=client, progress=False)
    assert set(ctx.timings) == {"forcing", "predict", "validate", "report", "export"}
    after = _product(recipe)
    assert after.time.values[-1] == np.datetime64(UNTIL)
    n = before.sizes["time"]
    assert after.sizes["time"] == n + 61
    for name in VARS:  # stored days untouched (every day is its own window)
        np.testing.assert_array_equal(after[name].isel(time=slice(0, n)).values,
                                      before[name].values, err_msg=name)
        assert np.isfinite(after[name].isel(time=slice(n, None)).values).all()

    def files(root):
        return {p: p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}

    snapshot = files(recipe.output("product"))
    again = update_recipe(recipe, UNTIL, client=client, progress=False)
    assert again.timings == {}
    assert files(recipe.output("product")) == snapshot


def test_climatology_outside_the_forcing_is_one_clear_error(somo_sources, client, tmp_path):
    from casm_cloud.somo.features import FeatureError

    raw = _raw(somo_sources, tmp_path)
    raw["periods"]["climatology"] = {"start": "2005-01-01", "end": "2009-12-31"}
    recipe = recipe_from_dict(raw)
    with pytest.raises(FeatureError, match="periods.climatology 2005-01-01..2009-12-31 is "
                                           "outside the forcing"):
        run_recipe(recipe, client=client, progress=False, until="statics")
    assert issubclass(FeatureError, UserError)
    assert stage_state(recipe.run_root, "forcing") is None
    assert not storage.store_state(recipe.run_root + "/forcing/features.zarr")["complete"]


def test_an_empty_cv_fold_stops_training_naming_it(somo_reference, client, tmp_path):
    from casm_cloud.somo.cv import CVError

    recipe = _copy(somo_reference[0], tmp_path)
    raw = recipe.model_dump(mode="json")
    raw["cv"] = {**raw["cv"], "folds": 40}
    bad = recipe_from_dict(raw)
    with pytest.raises(CVError, match="cv.folds=40"):
        run_recipe(bad, client=client, progress=False, until="train")
    assert stage_state(bad.run_root, "train")["config_hash"] != ""  # the old marker stays
    assert stage_state(bad.run_root, "train") == stage_state(recipe.run_root, "train")


def test_validate_ranks_products_at_the_stations_and_collocates(somo_reference, client,
                                                                 tmp_path):
    """The paper's Figs. 6-7 and S4: SoMo.ml, ERA5's layers and a product the recipe names
    (here the simulated truth, which must rank above the tiny model: the stations measure it)
    at the same
    station cells and days, and the triple collocation of SoMo.ml, ERA5 and the stations."""
    import pandas as pd

    recipe = _copy(somo_reference[0], tmp_path,
                   **{"validation.references": {"truth (simulated)": "truth"}})
    ctx = run_recipe(recipe, start_from="validate", until="report", client=client,
                     progress=False)
    ranked = ctx.summary["references"]
    print(ranked[["layer", "product", "R", "anomaly_R", "NRMSE", "rank"]].round(3))
    for layer in LAYERS:
        sub = ranked[ranked["layer"] == layer].set_index("product")
        assert set(sub.index) == {"SoMo.ml", "ERA5", "truth (simulated)"}, sub
        # the simulator's ERA5 is a linear map of the truth plus slow biases: the two tie
        assert sub.loc["truth (simulated)", "rank"] < sub.loc["SoMo.ml", "rank"], sub
        assert (sub["n_cells"] > 0).all()
    top = ranked[(ranked["layer"] == "sm_l1")].set_index("product")
    assert top.loc["truth (simulated)", "anomaly_R"] > 0.5, top  # deeper: issue 29 item 7
    run = Path(recipe.run_root) / "validate"
    cells = pd.read_csv(run / "references_cells.csv")
    assert {"product", "layer", "cell", "NRMSE", "anomaly_R", "n"} <= set(cells)
    tc = pd.read_csv(run / "tcol.csv")
    assert set(tc["series"]) == {"SoMo.ml", "ERA5", "ISMN"} and set(tc["layer"]) == set(LAYERS)
    assert np.isfinite(tc["snr"]).any()
    ismn = tc[tc["series"] == "ISMN"]  # the reference: beta 1, its own error std
    assert (ismn["beta"].dropna() == 1).all() and (ismn["err_std"].dropna() >= 0).all()
    report = Path(recipe.output("report"))
    page = (report / "index.html").read_text()
    assert "somo_references.png" in page and "Triple collocation" in page
    assert (report / "somo_references.png").stat().st_size > 5000
    # a reference the catalog lacks stops the run in the pre-flight check
    from casm_cloud.catalog import CatalogError
    from casm_cloud.recipes import check_recipe

    bad = _copy(somo_reference[0], tmp_path / "bad",
                **{"validation.references": {"cci": "esa_cci"}})
    with pytest.raises(CatalogError, match="validation.references: .* no entry 'esa_cci'"):
        check_recipe(bad)
