"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    # The kernel is its own process: it starts (and stops) its own embedded Ray.
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "matches the serial Counter: True" in text


def test_there_is_a_notebook() -> None:
    assert NOTEBOOKS
