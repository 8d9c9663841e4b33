"""Notebooks: committed without outputs, thin, and run headless (nbclient) on a tiny window."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

# Overrides of each notebook's "parameters" cell: tiny and fast.
PARAMETERS = {
    "01_aggregate_on_a_cluster.ipynb": {"START": "2011-03-01", "END": "2011-05-31"},
    "02_product_report.ipynb": {"START": "2010-01-01", "END": "2011-12-31",
                                "REPORT_DIR": "report"},
}


def test_there_are_notebooks_and_each_has_parameters():
    assert {p.name for p in NOTEBOOKS} == set(PARAMETERS)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name


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
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "from casm_cloud" in code
    assert "\ndef " not in "\n" + code and "\nclass " not in "\n" + code


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_headless(path, tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n" + "\n".join(f"{k} = {v!r}" for k, v in PARAMETERS[path.name].items())
    client = NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    if path.name == "02_product_report.ipynb":
        page = (tmp_path / "report" / "index.html").read_text()
        assert "Scores against the truth" in page
        assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
                   for c in nb.cells if c.cell_type == "code" for o in c.outputs)
