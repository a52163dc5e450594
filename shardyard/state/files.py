"""``file:///dir``: checkpoints as files, each written to a temporary name, fsynced, renamed.

Layout: ``DIR/<pool>/ckpt-<id>/part-<shard>.bin`` per shard, and ``COMMIT.json`` in the same
folder once every part is there (its presence makes the checkpoint complete). A crash
mid-write leaves a ``.tmp`` file or a folder without ``COMMIT.json``: never used.

Example:
    >>> import tempfile
    >>> from shardyard.state import open_store
    >>> store = open_store("file://" + tempfile.mkdtemp())
    >>> store.put_part("p", 1, 0, b"x"); store.commit("p", 1, 1, b"meta")
    >>> store.latest("p").meta
    b'meta'
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from urllib.parse import quote

from shardyard.state.base import (
    Checkpoint,
    IncompleteCheckpointError,
    StateStore,
    StateStoreError,
)

__all__ = ["FileStore", "write_atomic"]

COMMIT = "COMMIT.json"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees all of it or the old file: write a
    temporary file, fsync it, rename it over ``path``, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore(StateStore):
    """Checkpoints under a folder (created if missing)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateStoreError(f"cannot use {self.root} for checkpoints: {exc}") from exc

    def _dir(self, pool: str, checkpoint_id: int | None = None) -> Path:
        base = self.root / quote(pool, safe="")
        return base if checkpoint_id is None else base / f"ckpt-{checkpoint_id:012d}"

    def put_part(self, pool: str, checkpoint_id: int, shard_id: int, data: bytes) -> None:
        folder = self._dir(pool, checkpoint_id)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"part-{shard_id:06d}.bin", bytes(data))

    def commit(self, pool: str, checkpoint_id: int, num_shards: int, meta: bytes = b"") -> None:
        folder = self._dir(pool, checkpoint_id)
        missing = [s for s in range(num_shards) if not (folder / f"part-{s:06d}.bin").exists()]
        if missing:
            raise IncompleteCheckpointError(
                f"checkpoint {checkpoint_id} of pool {pool!r} in {self.root} lacks the parts "
                f"of shards {missing[:10]}: not committed"
            )
        record = {"num_shards": num_shards, "meta": base64.b64encode(meta).decode()}
        write_atomic(folder / COMMIT, json.dumps(record).encode())

    def _complete(self, pool: str) -> list[int]:
        base = self._dir(pool)
        if not base.is_dir():
            return []
        return sorted(
            int(d.name.removeprefix("ckpt-"))
            for d in base.iterdir()
            if d.name.startswith("ckpt-") and (d / COMMIT).exists()
        )

    def latest(self, pool: str) -> Checkpoint | None:
        done = self._complete(pool)
        if not done:
            return None
        cid = done[-1]
        record = json.loads((self._dir(pool, cid) / COMMIT).read_bytes())
        return Checkpoint(pool, cid, record["num_shards"], base64.b64decode(record["meta"]))

    def get_part(self, pool: str, checkpoint_id: int, shard_id: int) -> bytes:
        path = self._dir(pool, checkpoint_id) / f"part-{shard_id:06d}.bin"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyError((pool, checkpoint_id, shard_id)) from None

    def prune(self, pool: str, keep: int = 2) -> None:
        done = self._complete(pool)
        kept = set(done[-keep:]) if keep > 0 else set()
        newest = done[-1] if done else 0
        base = self._dir(pool)
        if not base.is_dir():
            return
        for d in base.iterdir():
            if not d.name.startswith("ckpt-"):
                continue
            cid = int(d.name.removeprefix("ckpt-"))
            if cid not in kept and cid < newest:
                shutil.rmtree(d, ignore_errors=True)
