"""Files in and out: a glob of text or JSON-lines files, and atomic part files per checkpoint.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.txt").write_text("x\\ny\\n")
    >>> src = FileSource(str(d / "*.txt"))
    >>> [r.value for r in src.read(10)], src.position()
    (['x', 'y'], {'file': 1, 'offset': 0})
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, Literal

from shardyard.state.files import write_atomic
from shardyard.streams.base import Record, Sink, Source
from shardyard.streams.codecs import Codec, decode_record, decoder

__all__ = ["FileSink", "FileSource"]


class FileSource(Source):
    """The lines of the files a glob matches (sorted by name), one record per line.

    Args:
        pattern: a glob, e.g. ``"data/*.jsonl"``; matched once, at the start.
        codec: how a line (without its newline) is decoded: ``"text"``, ``"json"`` (one
            JSON value per line), or any codec of :mod:`shardyard.streams.codecs`. A line
            that fails to decode goes to the job's dead letters; its id is ``file@offset``.

    The position is ``{"file": index, "offset": byte offset}`` after the last line read.
    """

    def __init__(self, pattern: str, codec: Codec = "text") -> None:
        self.files = sorted(glob.glob(pattern))
        self.codec = codec
        self._decode = decoder(codec)
        self._file = 0
        self._offset = 0
        self._handle: Any = None

    def restore(self, position: Any) -> None:
        self._close_handle()
        self._file = int(position["file"]) if position else 0
        self._offset = int(position["offset"]) if position else 0

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def read(self, max_records: int) -> list[Record] | None:
        out: list[Record] = []
        while len(out) < max_records:
            if self._file >= len(self.files):
                return out or None
            if self._handle is None:
                self._handle = open(self.files[self._file], "rb")  # noqa: SIM115
                self._handle.seek(self._offset)
            line = self._handle.readline()
            if not line:
                self._close_handle()
                self._file += 1
                self._offset = 0
                continue
            where = f"{self.files[self._file]}@{self._offset}"
            self._offset += len(line)
            out.append(decode_record(self._decode, line.rstrip(b"\n"), where))
        return out

    def position(self) -> Any:
        return {"file": self._file, "offset": self._offset}

    def close(self) -> None:
        self._close_handle()


class FileSink(Sink):
    """One file per checkpoint, ``DIR/part-<checkpoint id>.<ext>``, written atomically.

    Concatenating the parts in name order gives every output exactly once, in order.

    Args:
        folder: where the part files go (created if missing).
        codec: ``"text"`` (``str(output)`` per line) or ``"json"`` (one JSON value per line).
    """

    def __init__(self, folder: str, codec: Literal["text", "json"] = "text") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.codec = codec

    def write(self, checkpoint_id: int, outputs: list[Any]) -> None:
        ext = "jsonl" if self.codec == "json" else "txt"
        encode = json.dumps if self.codec == "json" else str
        data = "".join(f"{encode(o)}\n" for o in outputs).encode()
        write_atomic(self.folder / f"part-{checkpoint_id:08d}.{ext}", data)

    def parts(self) -> list[Path]:
        """The part files, in order."""
        return sorted(self.folder.glob("part-*"))
