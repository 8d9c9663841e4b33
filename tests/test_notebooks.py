"""Notebooks: committed without outputs, thin, and run headless (nbclient) on the tiny region.

The notebooks read their settings from the environment (``CASM_DEMO``, ``CASM_REGION``,
``CASM_CLUSTER``, ``CASM_N_WORKERS``, ``CASM_THREADS_PER_WORKER``), as a hub user or a test
sets them.  01 and 02 run in one CASM demo folder, in order: 01 simulates the tiny region and
runs aggregate and seasonal, 02 finds the run unfinished and runs the rest before it explores
the product (run alone, 02 runs the whole recipe).  03 runs in a SoMo.ml demo folder of its
own: it finds no run, runs the tiny SoMo.ml recipe and explores it; run again, it opens the
finished run.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

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


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo folder both notebooks share (01 first, as a user runs them)."""
    return tmp_path_factory.mktemp("notebooks") / "casm-demo"


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


def test_01_aggregate_on_a_cluster_runs_headless(demo, tmp_path, monkeypatch):
    nb = _execute(NAMES[0], demo, tmp_path, monkeypatch)
    assert (demo / "sources" / "catalog.yaml").is_file()
    for stage in ("aggregate", "seasonal"):
        assert (demo / "run" / stage / "_stage.json").is_file()
    assert not (demo / "run" / "pairs").exists()  # stopped after seasonal
    text = _text(nb)
    assert "dashboard: http" in text and "smos" in text
    assert _images(nb) >= 2  # the series and the amplitude map


def test_02_product_report_runs_headless(demo, tmp_path, monkeypatch):
    nb = _execute(NAMES[1], demo, tmp_path, monkeypatch)
    assert (demo / "run" / "validate" / "ismn" / "metrics.csv").is_file()
    assert (demo / "product.zarr").is_dir()
    figures = demo / "notebook-figures"
    assert {"maps_mean_cv.png", "hovmoller.png", "global_mean.png", "uncertainty_maps.png",
            "source_share.png", "station.png"} <= {p.name for p in figures.glob("*.png")}
    assert _images(nb) >= 6  # each figure shown in the notebook


@pytest.fixture(scope="module")
def somo_demo(tmp_path_factory) -> Path:
    """The SoMo.ml demo folder of notebook 03 (its layout differs from the CASM demo's)."""
    return tmp_path_factory.mktemp("notebooks") / "somo-demo"


def test_03_somo_run_runs_headless(somo_demo, tmp_path, monkeypatch):
    nb = _execute(NAMES[2], somo_demo, tmp_path, monkeypatch)
    for stage in ("forcing", "statics", "targets", "train", "predict", "validate", "report",
                  "export"):
        assert (somo_demo / "run" / stage / "_stage.json").is_file(), stage
    assert (somo_demo / "sources" / "truth.zarr").is_dir()
    assert (somo_demo / "product.zarr").is_dir() and (somo_demo / "report" / "index.html").is_file()
    text = _text(nb)
    assert "dashboard: http" in text and "to run: forcing, statics" in text
    assert "region tiny on ERA5_0p25" in text and "20-day window" in text
    cv = pd.read_csv(somo_demo / "run" / "validate" / "cv.csv", dtype={"fold": str})
    for layer in ("sm_l1", "sm_l2", "sm_l3"):  # the CV table, each layer's mean over folds
        row = cv[(cv["layer"] == layer) & (cv["fold"] == "mean")].iloc[0]
        assert f"{row['R']:.6f}" in text and f"{row['anomaly_R']:.6f}" in text
    figures = {p.name for p in (somo_demo / "notebook-figures").glob("*.png")}
    assert {"somo_maps.png", "somo_hovmoller.png", "somo_uncertainty.png", "somo_cv.png",
            "somo_stations.png"} <= figures
    assert any(name.startswith("somo_station_") for name in figures - {"somo_stations.png"})
    assert _images(nb) >= 6  # each figure shown in the notebook


def test_03_opens_the_finished_somo_run(somo_demo, tmp_path, monkeypatch):
    """Run again on the same folder: nothing runs, the finished run is opened and explored."""
    if not (somo_demo / "run" / "validate" / "_stage.json").is_file():
        pytest.skip("needs the run test_03_somo_run_runs_headless leaves")
    markers = {p: p.stat().st_mtime_ns for p in (somo_demo / "run").glob("*/_stage.json")}
    nb = _execute(NAMES[2], somo_demo, tmp_path, monkeypatch)
    text = _text(nb)
    assert "the run is complete" in text and "to run:" not in text
    assert "dashboard: http" in text
    assert {p: p.stat().st_mtime_ns for p in markers} == markers  # no stage ran again
    assert _images(nb) >= 6
