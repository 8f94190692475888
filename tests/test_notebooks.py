"""Every notebook is committed clean (no outputs, no library code in cells) and runs top to bottom
on its small default configuration (nbdev hygiene), in a temporary folder: the corpora, feature
stores, runs and figures it writes never land in the repository."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The four pipelines, named here so that a missing notebook fails every test below.
PIPELINES = ("feature_pipeline.ipynb", "smoothed_features.ipynb", "training_pipeline.ipynb", "hyperparam_search.ipynb")
NOTEBOOKS = sorted({*PIPELINES, *(p.name for p in ROOT.glob("*.ipynb"))})
# The figures each notebook draws (`make figures` writes these into img/); the others draw none there.
FIGURES = {"feature_pipeline.ipynb": ["log_mels.png"], "smoothed_features.ipynb": ["log_mels_smoothed.png", "smoothing.png"]}


def code_cells(name: str) -> list[str]:
    nb = json.loads((ROOT / name).read_text())
    return [cell for cell in nb["cells"] if cell["cell_type"] == "code"]


def defined_names(source: str | list[str]) -> list[str]:
    """The functions and classes a cell defines. nbformat stores a cell's source as one string or
    as a list of lines; IPython's ``%magic`` and ``!shell`` lines are not Python and are skipped."""
    lines = "".join(source).splitlines()
    python = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)
    return [node.name for node in ast.walk(ast.parse(python))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def test_the_four_pipelines_have_notebooks():
    assert {p.name for p in ROOT.glob("*.ipynb")} >= set(PIPELINES)


def test_defined_names_sees_a_def_in_either_source_layout():
    """The check below must be able to fail: a `def` or `class` in a list of lines or in one string
    is found (an earlier check looked for "def " among whole lines, which never matched)."""
    as_lines = ["import numpy as np\n", "def smooth(x):\n", "    return x\n"]
    assert defined_names(as_lines) == ["smooth"]
    assert defined_names("".join(as_lines)) == ["smooth"]
    assert defined_names(["%matplotlib inline\n", "class Store:\n", "    pass\n"]) == ["Store"]
    assert defined_names(["!pip install -q x  # def in a comment\n", "undefined = 'class Foo'\n"]) == []


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name):
    for cell in code_cells(name):
        assert not cell.get("outputs") and cell.get("execution_count") is None, name


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_cells_define_no_functions_or_classes(name):
    for cell in code_cells(name):
        assert defined_names(cell["source"]) == [], f"{name}: library code belongs in src/"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    # The notebooks name their outputs relative to the working folder (corpus/ features/ runs/ img/
    # out) and their presets as configs/NAME.json, which resolves to the preset that ships with the
    # package from any folder: an empty folder with an empty img/ stands in for the repository.
    (tmp_path / "img").mkdir()
    nb = nbformat.read(ROOT / name, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == FIGURES.get(name, [])
