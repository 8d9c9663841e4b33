"""Hyper-parameter search by the spatial CV (O & Orth 2021): every candidate × fold trained,
the best by the CV metric chosen per layer, recorded, and used by the final models; the
trainings' count and cost printed before they start; bad candidates one clear error."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from _tiny import copy_run

from casm_cloud.config import ConfigError, recipe_from_dict
from casm_cloud.recipes import run_recipe
from casm_cloud.somo import search

LAYERS = ("sm_l1", "sm_l2", "sm_l3")


def test_combinations_names_and_choice():
    combos = search.combinations({"lr": [0.01, 0.02], "hidden": [4, 8]})
    assert combos == [{"hidden": 4, "lr": 0.01}, {"hidden": 4, "lr": 0.02},
                      {"hidden": 8, "lr": 0.01}, {"hidden": 8, "lr": 0.02}]
    assert search.combination_name(combos[1]) == "hidden-4_lr-0.02"
    assert search.combinations({}) == [{}]
    model, fit = search.apply({"hidden": 24, "window": 120}, {"lr": 0.1, "epochs": 3},
                              {"hidden": 8, "lr": 0.01}, {"hidden": "model", "lr": "training"})
    assert model == {"hidden": 8, "window": 120} and fit == {"lr": 0.01, "epochs": 3}
    scores = pd.DataFrame({"candidate": ["a", "b", "c"], "NRMSE": [0.3, 0.2, np.nan],
                           "R": [0.9, 0.5, 0.99]})
    assert search.choose(scores, "NRMSE")["candidate"] == "b"   # smaller is better
    assert search.choose(scores, "R")["candidate"] == "c"       # larger is better
    with pytest.raises(ValueError, match="no candidate has a CV"):
        search.choose(scores.assign(NRMSE=np.nan), "NRMSE")


def test_cost_counts_every_training_and_grows_with_the_candidates():
    model = {"hidden": 8, "window": 20}
    fit = {"epochs": 2, "samples_per_epoch": 256, "batch_size": 64}
    kw = dict(folds=3, members=2, n_inputs=[16, 17, 18], samples=[1000, 900, 800], cells=10,
              days=500)
    n0, s0, f0 = search.stage_cost(model, fit, {}, {}, **kw)
    assert n0 == 3 * (3 + 2) and s0 == 3 * 5 * 2 * 4 * 20
    n2, s2, f2 = search.stage_cost(model, fit, {"hidden": [8, 16]}, {"hidden": "model"}, **kw)
    assert n2 == 3 * (2 * 3 + 2) and s2 == 3 * (2 * 3 + 2) * 2 * 4 * 20 and f2 > 2 * f0
    steps, flop = search.train_cost(hidden=8, n_inputs=16, window=20, samples=256, epochs=2,
                                    batch_size=64, cells=10, days=500)
    assert steps == 2 * 4 * 20
    assert flop == pytest.approx(20 * 2 * 24 * 32 * (3 * 256 * 2 + 10 * 500))
    line = search.cost_line(n2, s2, f2, step_ms=1.0, gflops=10.0, source="reference",
                            workers=2)
    hours = (s2 * 1e-3 + f2 / 1e10) / 3600
    assert line.startswith(f"{n2} trainings, ≈ {hours:.2f} worker-hours") and "2 workers" in line


@pytest.mark.parametrize("candidates, why", [
    ({"hidden": [4.5]}, "hidden candidate 4.5"),
    ({"dropout": [1.2]}, "dropout candidate 1.2"),
    ({"lr": []}, "lr: give at least one candidate value"),
    ({"window": [30]}, "search.candidates.window"),
])
def test_bad_candidates_name_the_key(somo_reference, candidates, why):
    raw = somo_reference[0].model_dump(mode="json")
    raw["search"] = {"candidates": candidates}
    with pytest.raises(ConfigError, match="search.candidates") as err:
        recipe_from_dict(raw)
    assert why in str(err.value)


@pytest.fixture(scope="module")
def searched(somo_reference, client, tmp_path_factory):
    """The tiny run from its train stage on, with a search of two hidden sizes."""
    recipe = copy_run(somo_reference[0], tmp_path_factory.mktemp("search"),
                      **{"search.candidates": {"hidden": [4, 8], "lr": [0.02]}})
    with contextlib.redirect_stdout(io.StringIO()) as out:
        ctx = run_recipe(recipe, start_from="train", client=client, progress=True)
    return recipe, ctx, out.getvalue()


def test_search_trains_every_candidate_on_every_fold_and_uses_the_best(searched):
    recipe, ctx, _ = searched
    train = Path(recipe.run_root, "train")
    table = pd.read_csv(train / "search.csv")
    assert sorted(table["candidate"]) == sorted(["hidden-4_lr-0.02", "hidden-8_lr-0.02"] * 3)
    runs = json.loads((train / "runs.json").read_text())
    for layer in LAYERS:
        sub = table[table["layer"] == layer]
        assert sub["chosen"].sum() == 1
        best = sub.loc[sub["NRMSE"].idxmin()]
        assert bool(best["chosen"]), sub          # the best CV NRMSE is the one chosen
        hidden = int(best["hidden"])
        assert runs["chosen"][layer]["model"]["hidden"] == hidden
        for f in range(3):  # the chosen candidate's folds are the layer's CV folds
            ours = xr.open_zarr(train / layer / f"fold_{f}" / "cells.zarr")[layer]
            theirs = xr.open_zarr(train / layer / "search" / best["candidate"] / f"fold_{f}"
                                  / "cells.zarr")[layer]
            np.testing.assert_array_equal(ours.values, theirs.values)
            for cand in sub["candidate"]:
                assert (train / layer / "search" / cand / f"fold_{f}" / "_done.json").exists()
        for s in range(2):  # the final seeds train with the chosen setting
            meta = json.loads((train / layer / f"seed_{s}" / "model.json").read_text())
            assert meta["architecture"]["hidden"] == hidden
    # the CV table the validate stage wrote is the chosen candidates' (same folds, same data)
    cv = ctx.summary["cv"]
    for layer in LAYERS:
        chosen = table[(table["layer"] == layer) & table["chosen"]].iloc[0]
        mean = cv[(cv["layer"] == layer) & (cv["fold"] == "mean")].iloc[0]
        assert mean["NRMSE"] == pytest.approx(chosen["NRMSE"], rel=1e-6)
    page = (Path(recipe.output("report")) / "index.html").read_text()
    assert "Hyper-parameter search" in page and "hidden-8_lr-0.02" in page


def test_search_cost_is_printed_before_the_trainings(searched):
    out = searched[2]
    # 3 layers x (2 candidates x 3 folds + 2 seeds)
    line = next(x for x in out.splitlines() if "trainings, ≈" in x)
    assert "24 trainings" in line and "GFLOP/s" in line, line
    assert out.index("trainings, ≈") < out.index("sm_l1: chose") < out.index("sm_l2: chose")
