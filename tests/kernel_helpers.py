"""A real Jupyter kernel for tests: run cells (as JupyterLab or nbclient send them), interrupt.

Example:
    >>> k = Kernel()                                        # doctest: +SKIP
    >>> k.run("print(1 + 1)").stdout                        # doctest: +SKIP
    '2\\n'
    >>> k.close()                                           # doctest: +SKIP
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.manager import KernelManager

__all__ = ["CellResult", "Kernel"]

WIDGET = "application/vnd.jupyter.widget-view+json"


@dataclass
class CellResult:
    """What one cell printed and displayed, and its error if it raised."""

    stdout: str = ""
    stderr: str = ""
    displays: list[dict[str, Any]] = field(default_factory=list)  # data of display messages
    result: dict[str, Any] | None = None  # data of the execute_result (the cell's value)
    error: dict[str, Any] | None = None  # ename, evalue, traceback

    def widgets(self) -> int:
        """How many widgets the cell displayed (a tqdm.notebook bar is one)."""
        return sum(1 for d in self.displays if WIDGET in d)


class Kernel:
    """A python3 kernel (this interpreter's ipykernel) in its own process."""

    def __init__(self) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def send(self, code: str, cell_id: str | None = None) -> str:
        """Start running ``code``; ``cell_id`` is sent as JupyterLab does (metadata.cellId)."""
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": False,
        }
        metadata = {"cellId": cell_id} if cell_id else {}
        msg = self.kc.session.msg("execute_request", content, metadata=metadata)
        self.kc.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])

    def collect(self, msg_id: str, timeout: float = 120.0) -> CellResult:
        """The outputs of the cell ``msg_id`` once the kernel is idle again."""
        out = CellResult()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the cell did not finish within {timeout:g} s")
            try:
                msg = self.kc.get_iopub_msg(timeout=left)
            except queue.Empty:
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                if content["name"] == "stdout":
                    out.stdout += content["text"]
                else:
                    out.stderr += content["text"]
            elif kind in ("display_data", "update_display_data"):
                out.displays.append(content["data"])
            elif kind == "execute_result":
                out.result = content["data"]
            elif kind == "error":
                out.error = content
            elif kind == "status" and content["execution_state"] == "idle":
                return out

    def run(self, code: str, cell_id: str | None = None, timeout: float = 120.0) -> CellResult:
        """Run a cell to its end."""
        return self.collect(self.send(code, cell_id), timeout)

    def interrupt(self) -> None:
        """What the notebook's stop button does (SIGINT to the kernel)."""
        self.km.interrupt_kernel()

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)
