"""Every notebook runs top to bottom on its small default configuration (nbdev hygiene)."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("*.ipynb"))


def test_the_four_pipelines_have_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"feature_pipeline.ipynb", "smoothed_features.ipynb", "training_pipeline.ipynb", "hyperparam_search.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, path.name
            # nbformat stores a cell's source as a list of lines or as one string: join before looking.
            source = "".join(cell["source"])
            assert "def " not in source and "class " not in source, "library code belongs in src/"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
