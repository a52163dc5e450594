"""SQL stores through SQLAlchemy Core: ``sqlite:///path.db`` (the embedded default for
durability on one machine), ``postgresql+psycopg://...``, ``mysql+pymysql://...``.

Two tables, created when missing: ``shardyard_checkpoint_parts`` (pool, checkpoint,
shard, chunk -> bytes; a part is split into chunks of at most 4 MiB, under MySQL's and
MariaDB's default ``max_allowed_packet``) and ``shardyard_checkpoints`` (pool, checkpoint
-> shards, meta). :meth:`SqlStore.commit` counts the parts and inserts the checkpoint row
in one transaction: a checkpoint row exists only when every part does.

Example:
    >>> import tempfile
    >>> from shardyard.state import open_store
    >>> store = open_store(f"sqlite:///{tempfile.mkdtemp()}/ckpt.db")
    >>> store.put_part("p", 1, 0, b"x"); store.commit("p", 1, 1)
    >>> store.get_part("p", 1, 0)
    b'x'
"""

from __future__ import annotations

import time
from typing import Any

from shardyard.state.base import (
    Checkpoint,
    IncompleteCheckpointError,
    StateStore,
    StateStoreError,
)

__all__ = ["CHUNK_BYTES", "SqlStore"]

CHUNK_BYTES = 4 << 20


def create_tables(engine: Any, meta: Any, error: Any) -> None:
    """``meta.create_all``, tolerating another process creating the same tables meanwhile
    (a check-then-create race: "already exists"); other failures go through ``error``."""
    import sqlalchemy as sa

    for attempt in range(3):
        try:
            meta.create_all(engine, checkfirst=True)
            return
        except sa.exc.SQLAlchemyError as exc:
            if "already exists" not in str(exc) or attempt == 2:
                raise error(exc) from None
            time.sleep(0.1)  # the other creator is done by now: check again


def _transient(exc: Exception) -> bool:
    orig = getattr(exc, "orig", None)
    code = orig.args[0] if orig is not None and orig.args else None
    return (
        code in (1205, 1213)  # MySQL/MariaDB: lock wait timeout, deadlock
        or getattr(orig, "sqlstate", None) in ("40001", "40P01")  # PostgreSQL
        or "database is locked" in str(exc)  # SQLite
    )


class SqlStore(StateStore):
    """Checkpoints in a SQL database (tables created on first use)."""

    def __init__(self, url: str, **engine_options: Any) -> None:
        try:
            import sqlalchemy as sa
            from sqlalchemy.dialects import mysql
        except ImportError:  # pragma: no cover - the extra is missing
            raise StateStoreError(
                f"{url.split(':', 1)[0]} checkpoints need SQLAlchemy: "
                'pip install "shardyard[postgres]" or "shardyard[mysql]" (or "[sql]")'
            ) from None
        self._sa = sa
        try:
            self._engine = sa.create_engine(url, pool_pre_ping=True, **engine_options)
        except Exception as exc:  # unknown dialect, a driver that is not installed
            raise StateStoreError(f"cannot open the checkpoint store {url!r}: {exc}") from exc
        self.url = self._engine.url.render_as_string(hide_password=True)
        blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
        meta = sa.MetaData()
        self._parts = sa.Table(
            "shardyard_checkpoint_parts",
            meta,
            sa.Column("pool", sa.String(200), primary_key=True),
            sa.Column("checkpoint_id", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("shard_id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("chunk", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("data", blob, nullable=False),
        )
        self._done = sa.Table(
            "shardyard_checkpoints",
            meta,
            sa.Column("pool", sa.String(200), primary_key=True),
            sa.Column("checkpoint_id", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("num_shards", sa.Integer, nullable=False),
            sa.Column("meta", blob, nullable=False),
            sa.Column("committed_at", sa.DateTime, server_default=sa.func.now()),
        )
        create_tables(self._engine, meta, self._unreachable)

    def _unreachable(self, exc: Exception) -> StateStoreError:
        u = self._engine.url
        where = (
            f"{u.get_backend_name()} at {u.host or 'localhost'}:{u.port or 'default port'} "
            f"(database {u.database!r}, user {u.username!r})"
            if u.get_backend_name() != "sqlite"
            else f"sqlite database {u.database!r}"
        )
        cause = getattr(exc, "orig", None) or exc
        return StateStoreError(f"cannot use {where} for checkpoints: {cause}".strip())

    def _run(self, fn: Any) -> Any:
        """Run ``fn(conn)`` in one transaction; a deadlock or lock timeout (which the
        database asks to retry: InnoDB's 1213/1205, PostgreSQL's 40001/40P01, SQLite's
        "database is locked") is retried a few times, anything else is an error."""
        for attempt in range(8):
            try:
                with self._engine.begin() as conn:
                    return fn(conn)
            except self._sa.exc.OperationalError as exc:
                if attempt < 7 and _transient(exc):
                    time.sleep(0.02 * (attempt + 1))
                    continue
                raise self._unreachable(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def put_part(self, pool: str, checkpoint_id: int, shard_id: int, data: bytes) -> None:
        sa, parts = self._sa, self._parts
        data = bytes(data)
        rows = [
            {
                "pool": pool,
                "checkpoint_id": checkpoint_id,
                "shard_id": shard_id,
                "chunk": i,
                "data": data[off : off + CHUNK_BYTES],
            }
            for i, off in enumerate(range(0, max(len(data), 1), CHUNK_BYTES))
        ]

        def write(conn: Any) -> None:
            conn.execute(
                sa.delete(parts).where(
                    parts.c.pool == pool,
                    parts.c.checkpoint_id == checkpoint_id,
                    parts.c.shard_id == shard_id,
                )
            )
            for row in rows:  # one statement per chunk: each stays under the packet limit
                conn.execute(sa.insert(parts), [row])

        self._run(write)

    def commit(self, pool: str, checkpoint_id: int, num_shards: int, meta: bytes = b"") -> None:
        sa, parts, done = self._sa, self._parts, self._done

        def write(conn: Any) -> None:
            have = conn.execute(
                sa.select(sa.func.count(sa.distinct(parts.c.shard_id))).where(
                    parts.c.pool == pool,
                    parts.c.checkpoint_id == checkpoint_id,
                    parts.c.shard_id < num_shards,
                )
            ).scalar_one()
            if have < num_shards:
                raise IncompleteCheckpointError(
                    f"checkpoint {checkpoint_id} of pool {pool!r} in {self.url} has the parts "
                    f"of {have} of its {num_shards} shards: not committed"
                )
            conn.execute(
                sa.delete(done).where(done.c.pool == pool, done.c.checkpoint_id == checkpoint_id)
            )
            conn.execute(
                sa.insert(done).values(
                    pool=pool,
                    checkpoint_id=checkpoint_id,
                    num_shards=num_shards,
                    meta=bytes(meta),
                )
            )

        self._run(write)

    def latest(self, pool: str) -> Checkpoint | None:
        sa, done = self._sa, self._done

        def read(conn: Any) -> Any:
            return conn.execute(
                sa.select(done.c.checkpoint_id, done.c.num_shards, done.c.meta)
                .where(done.c.pool == pool)
                .order_by(done.c.checkpoint_id.desc())
                .limit(1)
            ).first()

        row = self._run(read)
        if row is None:
            return None
        return Checkpoint(pool, int(row.checkpoint_id), int(row.num_shards), bytes(row.meta))

    def get_part(self, pool: str, checkpoint_id: int, shard_id: int) -> bytes:
        sa, parts = self._sa, self._parts

        def read(conn: Any) -> list[Any]:
            return list(
                conn.execute(
                    sa.select(parts.c.data)
                    .where(
                        parts.c.pool == pool,
                        parts.c.checkpoint_id == checkpoint_id,
                        parts.c.shard_id == shard_id,
                    )
                    .order_by(parts.c.chunk)
                )
            )

        rows = self._run(read)
        if not rows:
            raise KeyError((pool, checkpoint_id, shard_id))
        return b"".join(bytes(r.data) for r in rows)

    def prune(self, pool: str, keep: int = 2) -> None:
        sa, parts, done = self._sa, self._parts, self._done

        def write(conn: Any) -> None:
            ids = [
                int(r.checkpoint_id)
                for r in conn.execute(
                    sa.select(done.c.checkpoint_id)
                    .where(done.c.pool == pool)
                    .order_by(done.c.checkpoint_id)
                )
            ]
            if not ids:
                return
            kept = ids[-keep:] if keep > 0 else []
            oldest_kept = kept[0] if kept else ids[-1] + 1
            conn.execute(
                sa.delete(done).where(done.c.pool == pool, done.c.checkpoint_id < oldest_kept)
            )
            conn.execute(
                sa.delete(parts).where(
                    parts.c.pool == pool,
                    parts.c.checkpoint_id < min(oldest_kept, ids[-1]),
                )
            )

        self._run(write)

    def close(self) -> None:
        self._engine.dispose()
