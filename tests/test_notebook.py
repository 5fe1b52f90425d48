"""The docs' notebook example (docs/running.md), executed headlessly in a Jupyter kernel of this venv (nbclient + ipykernel); a cell
that raises fails the test. The kernel spec lives in a temporary folder: nothing is registered on the machine."""
from __future__ import annotations

import json
import re
import sys

import pytest

import backends

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

KERNEL = "dropbench-test"
CHECKS = """
import matplotlib.figure
assert r.ok and set(r.summary["status"]) == {"ok"}
assert set(zip(r.summary["backend"], r.summary["mode"])) == {("numpy", "eager"), ("jax", "eager"), ("jax", "compiled")}
figure = r.plot()
assert isinstance(figure, matplotlib.figure.Figure)
assert [len(ax.get_lines()) for ax in figure.axes] == [3, 3, 3]
assert again.summary.equals(r.summary) and again.epochs.equals(r.epochs) and _.shape[0] == 3
assert r.report.exists() and "## Agreement with the NumPy reference" in r.report.read_text()
"""


def readme_example() -> list[str]:
    """The python code blocks of the notebook section of docs/running.md (the README points there), one cell each."""
    text = (backends.PROJECT_ROOT / "docs" / "running.md").read_text()
    section = text.split("\n## In a notebook\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_has_a_notebook_example():
    cells = readme_example()
    assert len(cells) >= 2 and "from experiments import run, load" in cells[0]
    assert any("r.plot()" in cell for cell in cells)


def test_the_readme_notebook_example_runs_in_a_kernel(tmp_path, monkeypatch):
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "dropbench (test)", "language": "python",
        "env": {"PYTHONPATH": str(backends.PROJECT_ROOT)}}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    work = tmp_path / "work"  # the kernel's working folder: the example's results/ land here
    work.mkdir()
    cells = [nbformat.v4.new_code_cell(source) for source in [*readme_example(), CHECKS]]
    notebook = nbformat.v4.new_notebook(cells=cells)
    client = nbclient.NotebookClient(notebook, kernel_name=KERNEL, timeout=900,
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError when a cell raises
    plotted = next(cell for cell in notebook.cells if "r.plot()" in cell.source)
    shown = [output for output in plotted.outputs if output.get("output_type") == "execute_result"]
    assert shown and "image/png" in shown[0]["data"]  # the figure renders in the notebook
    runs = list((work / "results").glob("d2l-*"))
    assert len(runs) == 1 and (runs[0] / "learning_curves.png").exists()
