"""notebooks/quickstart.ipynb runs top to bottom (nbclient) on the tiny model; any failing cell fails the test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, cell.source[:60]


@pytest.fixture
def kernel_manager(tmp_path):
    """A kernel on this interpreter (the venv's), whatever other 'python3' kernels the machine has."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec = tmp_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (duckdb-ft tests)", "language": "python",
    }))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=specs)


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, tiny_model_path, kernel_manager, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("DUCKDB_FT_NOTEBOOK_MODEL", tiny_model_path)
    monkeypatch.setenv("PLOOMBER_STATS_ENABLED", "false")  # jupysql's telemetry: nothing leaves a test run
    # The tiny model's steps are too small for two threads: on a busy 2-core machine OpenMP's waiting made them
    # ~8x slower (2.7 s a step, against 0.35 s with one thread).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = NotebookClient(nb, km=kernel_manager, timeout=180, allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails

    def text(cell) -> str:
        return "".join(o.get("text", "") or json.dumps(o.get("data", {})) for o in cell.outputs)

    assert text(nb.cells[-1]).strip() == sys.executable
    assert any("SUCCESS" in text(c) for c in nb.cells if c.cell_type == "code")
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs), \
        "the loss curves were not plotted"
    progress = [c for c in nb.cells if c.cell_type == "code" and "tqdm" in c.source]
    assert progress and any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                            for o in progress[0].outputs), "the progress bar is no widget (is ipywidgets installed?)"
    assert "IProgress not found" not in text(progress[0]) and text(progress[0]).count("\r") < 5
    sql_cells = [c for c in nb.cells if c.cell_type == "code" and c.source.lstrip().startswith("%%sql")]
    assert sql_cells and all(c.outputs for c in sql_cells)
