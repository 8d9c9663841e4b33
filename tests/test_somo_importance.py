"""``casm-cloud somo importance``: the paper's permutation importance of the CV fold models on
the tiny SoMo.ml run (LocalCluster tasks), its table and figure, and its refusal of a run that
has not trained."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from _tiny import copy_run, local_client, somo_raw

from casm_cloud.cli import main
from casm_cloud.somo.importance import (
    BASELINE,
    STATIC,
    permute_static,
    permute_time,
    run_importance,
)

pytest.importorskip("torch")


def test_permutations_keep_values_and_rows():
    rng = np.random.default_rng(0)
    dyn = rng.random((4, 50, 3)).astype(np.float32)
    out = permute_time(dyn, 1, np.random.default_rng(1))
    assert np.array_equal(out[:, :, [0, 2]], dyn[:, :, [0, 2]])           # others untouched
    for c in range(4):                                                    # same values per cell
        assert np.array_equal(np.sort(out[c, :, 1]), np.sort(dyn[c, :, 1]))
    assert not np.array_equal(out[:, :, 1], dyn[:, :, 1])
    assert np.array_equal(permute_time(dyn, 1, np.random.default_rng(1)), out)  # seeded
    sta = np.arange(20.0).reshape(10, 2)
    ps = permute_static(sta, np.random.default_rng(2))
    rows = {tuple(r) for r in sta}
    assert {tuple(r) for r in ps} == rows and not np.array_equal(ps, sta)  # whole rows moved


@pytest.fixture(scope="module")
def importance(somo_reference, tmp_path_factory):
    recipe = copy_run(somo_reference[0], tmp_path_factory.mktemp("importance"))
    with local_client() as client:
        first = run_importance(recipe, client=client, seed=3)
        again = run_importance(recipe, out=str(tmp_path_factory.mktemp("again")), client=client,
                               seed=3)
    return recipe, first, again


def test_table_baseline_equals_cv_and_permutations_matter(importance):
    recipe, res, again = importance
    t = pd.read_csv(res["csv"])
    dynamic = list(recipe.model.dynamic)
    folds = [str(f) for f in range(recipe.cv.folds)]
    for layer in ("sm_l1", "sm_l2", "sm_l3"):
        for feature in (BASELINE, *dynamic, STATIC):
            got = t[(t["layer"] == layer) & (t["feature"] == feature)]
            assert sorted(got["fold"].astype(str)) == sorted([*folds, "median"]), (layer, feature)
    # the baseline is the validate stage's out-of-sample CV scores, fold by fold
    cells = pd.read_csv(f"{recipe.run_root}/validate/cv_cells.csv")
    cv = cells.groupby(["layer", "fold"])[["R", "NRMSE"]].median()
    base = t[(t["feature"] == BASELINE) & (t["fold"] != "median")]
    for _, row in base.iterrows():
        want = cv.loc[(row["layer"], int(row["fold"]))]
        assert row["R"] == pytest.approx(want["R"], abs=1e-6)
        assert row["NRMSE"] == pytest.approx(want["NRMSE"], abs=1e-6)
        assert row["dR"] == 0 and row["dNRMSE"] == 0
    perm = t[(t["feature"] != BASELINE) & (t["fold"] != "median")]
    assert (perm["dNRMSE"].abs() > 1e-4).any() and (perm["dR"].abs() > 1e-4).any()
    # seeded: a second run gives the same table
    pd.testing.assert_frame_equal(res["table"], again["table"])
    with open(res["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_a_run_that_has_not_trained(somo_sources, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(somo_raw(somo_sources, tmp_path / "fresh")))
    assert main(["somo", "importance", str(path)]) == 2
    out = capsys.readouterr().err.strip().splitlines()
    assert len(out) == 1 and "stage 'train' has not run" in out[0]
