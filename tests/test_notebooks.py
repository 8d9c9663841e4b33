"""Notebooks: committed without outputs, thin, and run headless (nbclient) on the tiny region.

The notebooks read their settings from the environment (``CASM_DEMO``, ``CASM_RECIPE``,
``CASM_REGION``, ``CASM_CLUSTER``, ``CASM_N_WORKERS``, ``CASM_THREADS_PER_WORKER``,
``CASM_FIGURES``), as a hub user or a test sets them.  01 simulates the tiny demo region and
runs aggregate and seasonal on a cluster.  02 and 03 open runs named by their recipe files,
as a user opens a run of their own: copies of the session's tiny runs (tests/conftest.py),
02 a finished CASM run (nothing runs), 03 a SoMo.ml run whose last two stages it runs before
it explores the product.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml
from _tiny import copy_run

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
NAMES = ["01_aggregate_on_a_cluster.ipynb", "02_product_report.ipynb",
         "03_somo_run.ipynb"]


def _code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_the_notebooks_and_each_has_parameters():
    assert [p.name for p in NOTEBOOKS] == NAMES
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        assert "CASM_DEMO" in tagged[0].source and "DASK_GATEWAY__ADDRESS" in tagged[0].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    raw = json.loads(path.read_text())
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, \
                f"{path.name}: clear outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_stays_thin(path):
    """Logic lives in the package: no function or class definitions in notebooks."""
    code = "\n".join(c.source for c in _code(nbformat.read(path, as_version=4)))
    assert "from casm_cloud" in code
    assert "\ndef " not in "\n" + code and "\nclass " not in "\n" + code


def _execute(name: str, demo: Path, cwd: Path, monkeypatch) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    # The kernel inherits this environment: the tiny region, 2 workers x 1 thread.
    for key, value in {"CASM_DEMO": str(demo), "CASM_REGION": "tiny", "CASM_CLUSTER": "local",
                       "CASM_N_WORKERS": "2", "CASM_THREADS_PER_WORKER": "1",
                       "MPLBACKEND": "module://matplotlib_inline.backend_inline"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DASK_GATEWAY__ADDRESS", raising=False)
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    errors = [o for c in _code(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors
    return nb


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in _code(nb) for o in c.outputs
               if o.output_type in ("display_data", "execute_result"))


def _text(nb) -> str:
    out = []
    for c in _code(nb):
        for o in c.outputs:
            out.append(o.get("text", ""))
            out.append(o.get("data", {}).get("text/plain", ""))
    return "\n".join(out)


def test_01_aggregate_on_a_cluster_runs_headless(tmp_path, monkeypatch):
    demo = tmp_path / "casm-demo"
    nb = _execute(NAMES[0], demo, tmp_path, monkeypatch)
    assert (demo / "sources" / "catalog.yaml").is_file()
    for stage in ("aggregate", "seasonal"):
        assert (demo / "run" / stage / "_stage.json").is_file()
    assert not (demo / "run" / "pairs").exists()  # stopped after seasonal
    text = _text(nb)
    assert "dashboard: http" in text and "smos" in text
    assert _images(nb) >= 2  # the series and the amplitude map


def _recipe_file(recipe, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    return path


def test_02_opens_a_finished_run_of_a_recipe_file(casm_reference, tmp_path, monkeypatch):
    """A user's finished run, named by its recipe (``CASM_RECIPE``): nothing runs, no cluster
    starts, the product is explored with the report's figure functions."""
    recipe = copy_run(casm_reference[0], tmp_path / "copy")
    markers = {p: p.stat().st_mtime_ns for p in Path(recipe.run_root).glob("*/_stage.json")}
    figures = tmp_path / "figures"
    monkeypatch.setenv("CASM_RECIPE", str(_recipe_file(recipe, tmp_path / "recipe.yaml")))
    monkeypatch.setenv("CASM_FIGURES", str(figures))
    nb = _execute(NAMES[1], tmp_path / "no-demo", tmp_path, monkeypatch)
    text = _text(nb)
    assert f"the run is complete: {recipe.run_root}" in text and "to run:" not in text
    assert {p: p.stat().st_mtime_ns for p in markers} == markers  # no stage ran again
    assert not (tmp_path / "no-demo").exists()  # the demo folder is not used
    assert {"maps_mean_cv.png", "hovmoller.png", "global_mean.png", "uncertainty_maps.png",
            "source_share.png", "station.png"} <= {p.name for p in figures.glob("*.png")}
    assert _images(nb) >= 6  # each figure shown in the notebook


def test_03_runs_the_missing_stages_of_a_somo_run_then_explores_it(somo_reference, tmp_path,
                                                                    monkeypatch):
    """A SoMo.ml run whose last stages have not run: the notebook runs them on its cluster
    (the dashboard link printed), then explores the product."""
    recipe = copy_run(somo_reference[0], tmp_path / "copy")
    run = Path(recipe.run_root)
    for stage in ("report", "export"):
        (run / stage / "_stage.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in run.glob("*/_stage.json")}
    figures_dir = tmp_path / "figures"
    monkeypatch.setenv("CASM_RECIPE", str(_recipe_file(recipe, tmp_path / "recipe.yaml")))
    monkeypatch.setenv("CASM_FIGURES", str(figures_dir))
    nb = _execute(NAMES[2], tmp_path / "no-demo", tmp_path, monkeypatch)
    text = _text(nb)
    assert "dashboard: http" in text and "to run: report, export" in text
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # only the missing stages ran
    for stage in ("report", "export"):
        assert (run / stage / "_stage.json").is_file(), stage
    assert Path(recipe.output("report"), "index.html").is_file()
    assert "region tiny on ERA5_0p25" in text and "20-day window" in text
    cv = pd.read_csv(run / "validate" / "cv.csv", dtype={"fold": str})
    for layer in ("sm_l1", "sm_l2", "sm_l3"):  # the CV table, each layer's mean over folds
        row = cv[(cv["layer"] == layer) & (cv["fold"] == "mean")].iloc[0]
        assert f"{row['R']:.6f}" in text and f"{row['anomaly_R']:.6f}" in text
    figures = {p.name for p in figures_dir.glob("*.png")}
    assert {"somo_maps.png", "somo_hovmoller.png", "somo_uncertainty.png", "somo_cv.png",
            "somo_stations.png"} <= figures
    assert any(name.startswith("somo_station_") for name in figures - {"somo_stations.png"})
    assert _images(nb) >= 6  # each figure shown in the notebook


def test_02_runs_on_a_run_without_truth(casm_reference, tmp_path, monkeypatch):
    """A real run has no truth store: the notebook shows the checks from the data instead."""
    recipe = copy_run(casm_reference[0], tmp_path / "copy")
    shutil.rmtree(Path(recipe.run_root) / "aggregate" / "truth.zarr")
    monkeypatch.setenv("CASM_RECIPE", str(_recipe_file(recipe, tmp_path / "recipe.yaml")))
    monkeypatch.setenv("CASM_FIGURES", str(tmp_path / "figures"))
    text = _text(_execute(NAMES[1], tmp_path / "no-demo", tmp_path, monkeypatch))
    assert "product vs SMAP: residual_R" in text and "nn_amsre vs nn_smos" in text
    assert "global_ubRMSE" not in text  # no scores against a truth


def test_03_runs_on_a_run_without_truth(somo_reference, tmp_path, monkeypatch):
    """A real SoMo.ml run names no truth: validate and report run without it, and the notebook
    shows the CV table, the comparison with ERA5's own layers and the stations instead."""
    recipe = copy_run(somo_reference[0], tmp_path / "copy", **{"sources.truth": None})
    run = Path(recipe.run_root)
    for name in ("truth.csv", "truth_cells.csv"):
        (run / "validate" / name).unlink()
    monkeypatch.setenv("CASM_RECIPE", str(_recipe_file(recipe, tmp_path / "recipe.yaml")))
    monkeypatch.setenv("CASM_FIGURES", str(tmp_path / "figures"))
    text = _text(_execute(NAMES[2], tmp_path / "no-demo", tmp_path, monkeypatch))
    assert "to run: validate, report\n" in text  # the recipe's truth is read by validate
    assert not (run / "validate" / "truth.csv").exists()
    era5 = pd.read_csv(run / "validate" / "era5.csv")
    assert list(era5["layer"]) == ["sm_l1", "sm_l2", "sm_l3"] and (era5["n_cells"] == 49).all()
    assert f"{era5['R'].iloc[0]:.6f}" in text and "no truth: a real run" in text
    page = Path(recipe.output("report"), "index.html").read_text()
    assert "Against ERA5" in page and "simulated truth" not in page
