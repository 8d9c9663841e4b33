"""The CASM recipe end to end on a tiny simulated region: run, resume after a kill,
monthly update, and which stages a changed recipe re-runs (the same recipe with its run root
on a GCS emulator is run by tests/test_secrets.py, which checks it gives these bits)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from _tiny import CASM_END as END
from _tiny import CASM_PRODUCT_VARS as PRODUCT_VARS
from _tiny import CASM_START as START  # noqa: F401  (test_faults imports it from here)
from _tiny import CASM_UNTIL as UNTIL
from _tiny import casm_raw as _raw
from _tiny import copy_run as _copy_run
from _tiny import product as _product

from casm_cloud import storage
from casm_cloud.config import recipe_from_dict
from casm_cloud.recipes import hashes, run_recipe, runner, update_recipe
from casm_cloud.recipes.casm import STAGES
from casm_cloud.schema import validate

STAGE_NAMES = [s.name for s in STAGES]


def stage_hashes(recipe) -> dict[str, str]:
    return hashes.stage_hashes(STAGES, recipe)


def stage_state(recipe, name: str) -> dict | None:
    return runner.stage_state(recipe.run_root, name, recipe.storage_options)


def test_recipe_end_to_end(casm_reference):
    recipe, ctx = casm_reference
    assert list(ctx.timings) == list(STAGE_NAMES)
    product = _product(recipe)  # plain xarray, no casm_cloud reader
    validate(product, "product")
    # Every finished store of the run opens with plain xarray's defaults, warning-free
    # (consolidated metadata): the product a user opens first among them.
    finished = [p.parent for p in Path(recipe.run_root).rglob("zarr.json")
                if storage.store_state(str(p.parent))["complete"]]
    assert Path(recipe.output("product")) in finished
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for store in finished:
            assert xr.open_zarr(store).attrs[storage.COMPLETE_ATTR], store
    assert set(PRODUCT_VARS) <= set(product.data_vars)
    # both eras and their overlap are in the record
    codes = set(np.unique(product["source"].values)) - {0}
    assert len(codes) == 3, codes
    assert product.time.values[0] <= np.datetime64("2011-01-03")
    # the last complete 3-day bin (anchored on 2002-01-01) of the period
    assert product.time.values[-1] == np.datetime64("2015-12-28")
    assert np.isfinite(product["lat"].values).all() and np.isfinite(product["lon"].values).all()
    years = sorted(p.name for p in Path(recipe.output("export")).glob("*.nc"))
    assert years == [f"CASM_SM_{y}.nc" for y in range(2011, 2016)]
    casm = xr.open_dataset(Path(recipe.output("export")) / "CASM_SM_2013.nc")
    assert {"CASM_soil_moisture", "structural_uncertainty"} <= set(casm.data_vars)
    # which precision made the values, and its check, in the product and the files
    for attrs in (product.attrs, casm.attrs):
        assert attrs["casm_precision"] in ("fp32", "bf16", "bf16,fp32"), attrs
        assert attrs["casm_precision_tolerance"] == 1e-3 and "casm_precision_samples" in attrs
        assert attrs["casm_precision_error"] <= 1e-3
    assert (Path(recipe.output("report")) / "index.html").is_file()
    assert Path(recipe.run_root, "validate", "ismn", "metrics.csv").is_file()
    # frozen soil screened out: no SMOS mean where all three days had ERA5 skt < 0 °C
    skt = xr.open_zarr(Path(recipe.sources.catalog).parent / "era5.zarr")["skt"]
    smos = xr.open_zarr(recipe.run_root + "/aggregate/smos.zarr")["tb_h"]
    warmest = skt.sel(time=slice("2011-01-02", END)).coarsen(time=3, boundary="trim").max()
    warmest = warmest.assign_coords(time=warmest.time - np.timedelta64(1, "D"))  # 3-day bins
    frozen = (warmest < 273.15).reindex_like(smos, fill_value=False)
    assert int(frozen.sum()) > 100 and not smos.where(frozen).notnull().any()
    scores = ctx.summary["scores"]
    # The record follows the simulated truth (measured: R 0.77, residual R 0.85; a broken
    # chain gives a residual R near 0, an unscreened frozen season about 0.35).
    assert scores["R"] > 0.6 and scores["residual_R"] > 0.6, scores
    assert scores["n_pixels"] >= 30
    for name in STAGE_NAMES:
        assert stage_state(recipe, name)["config_hash"] == stage_hashes(recipe)[name]


def test_run_killed_in_a_stage_resumes_to_the_same_product(casm_reference, client, tmp_path):
    """``casm-cloud run`` SIGKILLed while ``predict_smos`` writes its chunks (train done), then
    run again: the remaining stages run, and the product has the reference's bits."""
    recipe = _copy_run(casm_reference[0], tmp_path)
    run = Path(recipe.run_root)
    # the run as it stood when train had finished: nothing of the later stages
    for name in STAGE_NAMES[STAGE_NAMES.index("predict_smos"):]:
        shutil.rmtree(run / name)
    for output in ("product", "export", "report"):
        shutil.rmtree(recipe.output(output), ignore_errors=True)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    exe = Path(sys.executable).parent / "casm-cloud"
    proc = subprocess.Popen([str(exe), "run", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith("[casm-cloud] predict_smos") and "running" in line:
                time.sleep(1)                     # some of its chunks written
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert stage_state(recipe, "train") is not None and stage_state(recipe, "predict_smos") is None

    ctx = run_recipe(recipe, client=client, progress=False)
    assert list(ctx.timings) == list(STAGE_NAMES[STAGE_NAMES.index("predict_smos"):])
    got, want = _product(recipe), _product(casm_reference[0])
    for name in PRODUCT_VARS:
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)


def test_update_appends_exactly_the_new_bins_and_is_idempotent(casm_reference, client, tmp_path):
    recipe = _copy_run(casm_reference[0], tmp_path)
    before = _product(recipe)
    ctx = update_recipe(recipe, UNTIL, client=client, progress=False)
    assert set(ctx.timings) == {"aggregate", "predict_smos", "predict_amsre", "merge",
                                "validate", "report", "export"}
    after = _product(recipe)
    # the complete anchored 3-day bins after the last one through 2016-02-29
    new = pd.date_range("2015-12-31", "2016-02-26", freq="3D").values
    np.testing.assert_array_equal(after.time.values, np.concatenate([before.time.values, new]))
    for name in PRODUCT_VARS:  # stored bins untouched
        np.testing.assert_array_equal(after[name].isel(time=slice(0, before.sizes["time"])),
                                      before[name], err_msg=name)
    tail = after.sel(time=new)
    aggregate = storage.open_zarr(recipe.run_root + "/aggregate/smos.zarr", require_complete=True)
    assert aggregate.time.values[-1] == new[-1]
    # predicted exactly where the new SMOS means are (winter: frozen days screened out)
    valid = np.isfinite(tail["sm"].values)
    np.testing.assert_array_equal(valid, aggregate["tb_h"].sel(time=new).notnull().values)
    assert valid.sum() > 100 and (tail["source"].values[valid] == 2).all()  # SMOS era
    assert (Path(recipe.output("export")) / "CASM_SM_2016.nc").is_file()

    def files(root):
        return {p: p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}

    snapshot = files(recipe.output("product"))
    again = update_recipe(recipe, UNTIL, client=client, progress=False)
    assert again.timings == {}
    assert files(recipe.output("product")) == snapshot


def test_update_needs_a_finished_run_and_a_later_date(casm_sources, casm_reference, tmp_path):
    with pytest.raises(ValueError, match="already ends on 2015-12-31"):
        update_recipe(casm_reference[0], "2015-06-30", progress=False)
    with pytest.raises(ValueError, match="expected a date"):
        update_recipe(casm_reference[0], "next month", progress=False)
    fresh = recipe_from_dict(_raw(casm_sources, tmp_path))
    with pytest.raises(storage.StoreError, match="stage 'aggregate' has not run"):
        update_recipe(fresh, UNTIL, progress=False)


@pytest.mark.parametrize(("change", "reruns"), [
    ({"validation.min_obs": 30}, {"validate", "report"}),
    ({"outputs.export": "elsewhere"}, {"export"}),
    ({"ensemble.n_noise": 5}, {"predict_smos", "transfer", "predict_amsre", "merge",
                               "validate", "report", "export"}),
    ({"training.fine_tune_epochs": 3}, {"transfer", "predict_amsre", "merge", "validate",
                                        "report", "export"}),
    ({"seasonal.min_obs": 30}, set(STAGE_NAMES) - {"aggregate"}),
])
def test_a_changed_recipe_reruns_the_stages_it_affects(casm_reference, change, reruns):
    recipe = casm_reference[0]
    raw = recipe.model_dump(mode="json")
    for key, value in change.items():
        section, name = key.split(".")
        raw[section] = {**raw[section], name: value}
    a, b = stage_hashes(recipe), stage_hashes(recipe_from_dict(raw))
    assert {s for s in STAGE_NAMES if a[s] != b[s]} == reruns


def test_a_changed_recipe_runs_only_those_stages(casm_reference, client, tmp_path):
    recipe = _copy_run(casm_reference[0], tmp_path, **{"validation.min_obs": 30})
    ctx = run_recipe(recipe, client=client, progress=False)
    assert list(ctx.timings) == ["validate", "report"]


def test_cli_update_errors_are_one_line_and_a_failure_code(casm_sources, tmp_path, capsys):
    from casm_cloud.cli import main

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_raw(casm_sources, tmp_path)))
    assert main(["update", str(path), "--until", "2015-06-30"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already ends on 2015-12-31" in err
    assert main(["update", str(path), "--until", UNTIL]) == 2
    assert "run the recipe first" in capsys.readouterr().err


def test_report_of_a_run_without_truth_has_the_checks_from_the_data(casm_reference, client,
                                                                      tmp_path):
    """A real run has no truth: the report still scores the product against SMAP, the two
    networks over their overlap, the steps at the sensor changes and the uncertainty per era."""
    recipe = _copy_run(casm_reference[0], tmp_path)
    shutil.rmtree(Path(recipe.run_root) / "aggregate" / "truth.zarr")
    recipe = recipe.model_copy(update={"sources": recipe.sources.model_copy(
        update={"truth": None})})
    ctx = run_recipe(recipe, start_from="report", until="report", client=client, progress=False)
    assert "scores" not in ctx.summary
    checks = ctx.summary["checks"]
    print("checks without truth:", {k: {s: round(v, 3) for s, v in checks[k].items()
                                        if s in ("R", "residual_R")}
                                    for k in ("vs_smap", "networks")})
    assert 0.3 < checks["vs_smap"]["R"] <= 1 and np.isfinite(checks["vs_smap"]["residual_R"])
    assert checks["networks"]["names"] == "nn_amsre vs nn_smos"
    assert 0.3 < checks["networks"]["R"] <= 1 and np.isfinite(checks["networks"]["residual_R"])
    assert set(checks["steps"]) == {"AMSR-E → AMSR-E + SMOS", "AMSR-E + SMOS → SMOS"}
    # the record starts after SMOS joined: no window before the first change, so no step
    assert np.isfinite(checks["steps"]["AMSR-E + SMOS → SMOS"])
    assert {"AMSR-E", "SMOS"} <= set(checks["uncertainty"])
    report = Path(recipe.output("report"))
    page = (report / "index.html").read_text()
    assert "Consistency checks from the data" in page and "Scores against the truth" not in page
    table = pd.read_csv(report / "checks.csv")
    assert "product vs SMAP: residual_R" in set(table["check"])
