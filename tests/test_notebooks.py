"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel, on a bare machine.

Each notebook checks its own answer against a serial computation and prints
``matches the serial ...: True``; the notebooks are stored without outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from shardyard.cluster.local import LocalCluster

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(path, as_version=4)
    # A notebook that starts a cluster of its own keeps it here, so it is stopped below even
    # if a cell fails before the notebook's last one stops it.
    folder = tmp_path / "cluster"
    monkeypatch.setenv("SHARDYARD_CLUSTER_DIR", str(folder))
    try:
        # The kernel is its own process: it starts (and stops) its own embedded Ray.
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {}}).execute()
    finally:
        if (folder / "cluster.json").exists():
            cluster = LocalCluster.load(folder)
            if cluster.head_alive():
                cluster.down()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    checks = [line for line in text.splitlines() if line.startswith("matches the serial")]
    assert checks and all(line.endswith(": True") for line in checks), checks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name
    assert os.path.getsize(path) < 64_000


def test_there_are_the_notebooks_the_docs_name() -> None:
    names = {p.stem for p in NOTEBOOKS}
    assert {"quickstart", "async", "remote_cluster", "scale_out"} <= names
