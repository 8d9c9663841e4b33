"""Notebooks: committed without outputs, thin, and run headless (nbclient) on the tiny region.

The notebooks read their settings from the environment (``CASM_DEMO``, ``CASM_REGION``,
``CASM_N_WORKERS``, ``CASM_THREADS_PER_WORKER``), as a hub user or a test sets them.  Both
run in one demo folder, in order: 01 simulates the tiny region and runs aggregate and
seasonal, 02 finds the run unfinished and runs the rest before it explores the product
(run alone, 02 runs the whole recipe).
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
NAMES = ["01_aggregate_on_a_cluster.ipynb", "02_product_report.ipynb"]


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
