"""The notebooks in ``notebooks/`` execute from top to bottom without an error, each within its time budget,
and are committed with their outputs (plots included).

After changing a notebook, execute it and write its outputs back (what the code host shows)::

    python tests/test_notebooks.py                      # every notebook
    python tests/test_notebooks.py 03_gamma_sweep.ipynb  # one

Skip the notebooks in a quick local run with ``python -m pytest -m "not notebooks"`` (or every end-to-end
test with ``-m "not slow"``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError
from nbformat import NotebookNode

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = (
    "01_focal_loss.ipynb",
    "02_class_weights.ipynb",
    "03_gamma_sweep.ipynb",
    "04_predictions.ipynb",
)
# Wall-clock budget of one whole notebook on 2 CPU cores (they take 10-60 s each on an idle machine).
NOTEBOOK_TIMEOUT_S = 300
# Committed size limit: plots are PNGs at 80 dpi, so a notebook stays at a few hundred KB.
MAX_BYTES = 500_000


def execute(path: Path, tmp_dir: Path, timeout_s: float = NOTEBOOK_TIMEOUT_S) -> NotebookNode:
    """Execute the notebook at ``path`` in a fresh ``python3`` kernel started in its folder; returns it with
    its new outputs (the file is not written). The kernel's ``TMPDIR`` is ``tmp_dir``: the runs and sweeps
    that the notebooks train land there, not in the system's temporary folder.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised (the message holds the cell and traceback).
        TimeoutError: the whole notebook took longer than ``timeout_s`` seconds.
    """
    nb = nbformat.read(path, as_version=4)
    deadline = time.monotonic() + timeout_s

    def remaining(cell: NotebookNode) -> int:  # one budget for the notebook, not one per cell
        return max(1, int(deadline - time.monotonic()))

    client = NotebookClient(
        nb,
        timeout_func=remaining,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute(env={**os.environ, "TMPDIR": str(tmp_dir)})
    except CellTimeoutError as e:
        raise TimeoutError(f"{path.name} did not finish within {timeout_s} s: {e}") from None
    return nb


def code_cells(nb: NotebookNode) -> list[NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_the_four_notebooks_are_there():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_with_outputs(name):
    """Executed in order from a fresh kernel, no error output, at least one plot, small on disk."""
    path = NOTEBOOK_DIR / name
    nb = nbformat.read(path, as_version=4)
    cells = code_cells(nb)
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{name} is not executed top to bottom in one kernel (execution counts {counts}); "
        f"run: python tests/test_notebooks.py {name}"
    )
    outputs = [o for c in cells for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"{name} is committed with an error output: {errors[0].get('ename')}"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} has no plot output"
    size = path.stat().st_size
    assert size <= MAX_BYTES, f"{name} is {size} bytes (limit {MAX_BYTES}): lower the dpi or the figure count"


def _tiny_notebook(path: Path, source: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, path)
    return path


@pytest.mark.notebooks
@pytest.mark.slow  # starts a kernel
def test_execute_raises_on_a_failing_cell(tmp_path):
    path = _tiny_notebook(tmp_path / "broken.ipynb", "raise ValueError('bad cell')")
    with pytest.raises(CellExecutionError, match="bad cell"):
        execute(path, tmp_path)


@pytest.mark.notebooks
@pytest.mark.slow  # starts a kernel, waits for the 3 s budget
def test_execute_enforces_one_budget_for_the_whole_notebook(tmp_path):
    path = _tiny_notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(30)")
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"slow\.ipynb did not finish within 3 s"):
        execute(path, tmp_path, timeout_s=3)
    assert time.monotonic() - start < 25


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path):
    nb = execute(NOTEBOOK_DIR / name, tmp_path)
    outputs = [o for c in code_cells(nb) for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} produced no plot"


def main(argv: list[str]) -> int:
    names = argv or list(NOTEBOOKS)
    for name in names:
        path = NOTEBOOK_DIR / Path(name).name
        start = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            nb = execute(path, Path(tmp))
        nbformat.write(nb, path)
        print(f"{path.relative_to(ROOT)}: executed in {time.monotonic() - start:.0f} s, "
              f"{path.stat().st_size / 1000:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
