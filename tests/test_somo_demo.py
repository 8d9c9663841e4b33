"""The run summary of a SoMo.ml run (``casm-cloud demo --recipe somo``, ``run``, ``update``):
the CV table per layer and the scores against the truth at held-out cells, read from the
validate stage's outputs, so a run that finds every stage up to date prints them too."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import yaml

from casm_cloud import storage
from casm_cloud.cli import main
from casm_cloud.cli.summary import print_summary
from casm_cloud.recipes.stage import Context

STAGES = ("forcing", "statics", "targets", "train", "predict", "validate", "report", "export")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _marker(root, name: str, minutes: int) -> None:
    storage.write_marker(storage.join(str(root), name, "_stage.json"),
                         {"stage": name, "config_hash": "h", "seconds": 1.0,
                          "finished": (T0 + dt.timedelta(minutes=minutes)).isoformat()})


def _fake_run(root):
    """A run root as a finished SoMo.ml run leaves it: markers in order, the two tables."""
    for i, name in enumerate(STAGES):
        _marker(root, name, i)
    cv = pd.DataFrame({"layer": ["sm_l1"] * 3 + ["sm_l2"] * 3,
                       "fold": ["0", "1", "mean"] * 2, "n_cells": [4, 5, 9, 3, 4, 7],
                       "R": [0.8125, 0.7375, 0.775, 0.6625, 0.6875, 0.675],
                       "NRMSE": [0.11, 0.13, 0.12, 0.15, 0.17, 0.16],
                       "anomaly_R": [0.5125, 0.4875, 0.5, 0.4125, 0.3875, 0.4]})
    truth = pd.DataFrame({"layer": ["sm_l1", "sm_l2"], "n_cells": [11, 11],
                          "R": [0.8625, 0.7125], "NRMSE": [0.09, 0.14],
                          "anomaly_R": [0.6125, 0.5375]})
    cv.to_csv(root / "validate" / "cv.csv", index=False)
    truth.to_csv(root / "validate" / "truth.csv", index=False)
    return cv, truth


def _lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_summary_prints_the_tables_on_disk_not_the_context(tmp_path, capsys):
    root = tmp_path / "run"
    cv, truth = _fake_run(root)
    ctx = Context(run_root=str(root), storage_options={})
    ctx.summary["cv"] = cv.assign(R=0.0)  # what a stage left in memory is not what is printed
    print_summary(ctx)
    out = capsys.readouterr().out
    rows = _lines(out)
    assert "cross validation at held-out station cells" in out
    assert "scores against the simulated truth at cells no fold trained on" in out
    # every CV row, per layer and fold (the 'mean' over folds included), as on disk
    for r in cv.itertuples():
        assert [r.layer, r.fold, str(r.n_cells), f"{r.R:.3f}", f"{r.NRMSE:.3f}",
                f"{r.anomaly_R:.3f}"] in rows
    for r in truth.itertuples():
        assert [r.layer, str(r.n_cells), f"{r.R:.3f}", f"{r.NRMSE:.3f}",
                f"{r.anomaly_R:.3f}"] in rows
    assert out.index("cross validation") < out.index("scores against the simulated truth")


def test_tables_older_than_an_upstream_stage_are_not_printed(tmp_path, capsys):
    root = tmp_path / "run"
    _fake_run(root)
    _marker(root, "train", 60)  # train ran again, the run stopped before validate
    print_summary(Context(run_root=str(root), storage_options={}))
    out = capsys.readouterr().out
    assert "cross validation" not in out and "0.775" not in out
    assert "validate tables not shown: stage 'train' ran after validate" in out
    _marker(root, "validate", 61)  # validate ran again after it
    print_summary(Context(run_root=str(root), storage_options={}))
    assert "0.775" in capsys.readouterr().out


def test_a_run_without_the_somo_tables_prints_none(tmp_path, capsys):
    root = tmp_path / "run"
    _fake_run(root)
    (root / "validate" / "cv.csv").unlink()
    (root / "validate" / "truth.csv").unlink()  # a CASM run: validate/ismn/ only
    print_summary(Context(run_root=str(root), storage_options={}))
    out = capsys.readouterr().out
    assert "cross validation" not in out and "validate tables" not in out
    _fake_run(root)
    (root / "validate" / "_stage.json").unlink()  # validate never finished
    print_summary(Context(run_root=str(root), storage_options={}))
    assert "cross validation" not in capsys.readouterr().out


def test_an_up_to_date_run_still_prints_the_cv_table_and_truth_scores(somo_reference,
                                                                       tmp_path, capsys):
    """The tiny SoMo.ml run, copied and run again: every stage is up to date, nothing
    computes, and the summary still holds the CV table and the scores against the truth."""
    from _tiny import copy_run

    recipe = copy_run(somo_reference[0], tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    capsys.readouterr()
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    for name in STAGES:
        assert f"[casm-cloud] {name:<14} up to date" in out
    assert "stages run:" not in out  # nothing ran
    rows = _lines(out)
    cv = pd.read_csv(tmp_path / "run" / "validate" / "cv.csv", dtype={"fold": str})
    truth = pd.read_csv(tmp_path / "run" / "validate" / "truth.csv")
    assert set(cv["layer"]) == {"sm_l1", "sm_l2", "sm_l3"}
    for r in cv[cv["fold"] == "mean"].itertuples():  # the paper's scores, relative bias too
        assert [r.layer, "mean", str(r.n_cells), f"{r.R:.3f}", f"{r.NRMSE:.3f}",
                f"{r.rel_bias:.3f}", f"{r.anomaly_R:.3f}"] in rows
    for r in truth.itertuples():
        assert [r.layer, str(r.n_cells), f"{r.R:.3f}", f"{r.NRMSE:.3f}",
                f"{r.rel_bias:.3f}", f"{r.anomaly_R:.3f}"] in rows
