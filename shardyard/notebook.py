"""Where shardyard runs: in a Jupyter kernel or not, and which notebook cell is running.

Used by the pool for what notebooks need: progress bars that are widgets, and pools that
are released when the cell that made them runs again (IPython's output cache would keep a
displayed pool alive otherwise).

Example:
    >>> in_jupyter_kernel()
    False
    >>> current_cell() is None
    True
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["current_cell", "in_jupyter_kernel"]


def _ipython() -> Any:
    """The running IPython shell, or ``None`` (IPython is never imported here)."""
    module = sys.modules.get("IPython")
    if module is None:
        return None
    try:
        return module.get_ipython()
    except Exception:
        return None


def in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (ipykernel), not in a terminal IPython or a script."""
    shell = _ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def current_cell() -> tuple[str, int] | None:
    """``(cell id, execution count)`` of the notebook cell running now, or ``None``.

    The cell id is the one the front end sends (JupyterLab, VS Code and nbclient send
    ``cellId``); without it, the cell's code file, which ipykernel names after a hash of
    the cell's text. Running the same cell again gives the same id and a new count.
    """
    shell = _ipython()
    kernel = getattr(shell, "kernel", None) if shell is not None else None
    if kernel is None:
        return None
    count = int(getattr(shell, "execution_count", 0) or 0)
    cell_id: str | None = None
    try:
        cell_id = kernel.get_parent().get("metadata", {}).get("cellId")
    except Exception:
        cell_id = None
    if not cell_id:
        cell_id = _cell_file()
        if cell_id is None:
            return None
    return str(cell_id), count


def _cell_file() -> str | None:
    """The code file of the cell running now: the outermost frame in ipykernel's cell files.

    ipykernel names a cell's code file after a hash of the cell's text, in one folder per
    kernel; frames of helper functions (defined in another cell or a module) are skipped,
    so a pool made by a helper belongs to the cell that called it.
    """
    try:
        from ipykernel.compiler import get_tmp_directory
    except ImportError:
        return None
    folder = get_tmp_directory()
    found: str | None = None
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(folder):
            found = name  # keep going: the outermost one is the cell's top level
        frame = frame.f_back  # type: ignore[assignment]
    return found
