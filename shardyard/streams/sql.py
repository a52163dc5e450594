"""SQL out: upsert each checkpoint's outputs by key (PostgreSQL, MySQL/MariaDB, SQLite).

Outputs are dicts of column values. Each checkpoint's outputs are upserted in one
transaction by the key columns, so writing a checkpoint's outputs again (after a crash
before the checkpoint's commit) sets the same rows to the same values: effectively once.
The newest output of a key wins; the row also records the checkpoint that wrote it
(column ``shardyard_checkpoint``).

Example:
    >>> sink = SqlUpsertSink("sqlite:///totals.db", "totals", key_columns=["word"],
    ...                      columns={"word": "text", "count": "int"})   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from shardyard.state.base import StateStoreError
from shardyard.state.sql import create_tables
from shardyard.streams.base import Sink

__all__ = ["DeadLetterTable", "SqlUpsertSink"]

_TYPES = {"text": "String", "int": "BigInteger", "float": "Float", "bytes": "LargeBinary"}


def _unusable(engine: Any, what: str, exc: Exception) -> StateStoreError:
    u = engine.url
    return StateStoreError(
        f"cannot use {u.get_backend_name()} at {u.host}:{u.port} (database {u.database!r}, "
        f"user {u.username!r}) for {what}: {getattr(exc, 'orig', None) or exc}"
    )


class SqlUpsertSink(Sink):
    """Upserts dict outputs into ``table`` (created when missing) by ``key_columns``.

    Args:
        url: a SQLAlchemy URL (``postgresql+psycopg://...``, ``mysql+pymysql://...``,
            ``sqlite:///path.db``).
        table: the table name.
        key_columns: the columns that identify a row.
        columns: every column and its type: ``text``, ``int``, ``float`` or ``bytes``.
    """

    def __init__(
        self, url: str, table: str, key_columns: list[str], columns: dict[str, str]
    ) -> None:
        import sqlalchemy as sa

        self._sa = sa
        self._engine = sa.create_engine(url, pool_pre_ping=True)
        meta = sa.MetaData()
        cols: list[Any] = []
        for name, kind in columns.items():
            if kind not in _TYPES:
                raise ValueError(f"column {name!r}: type {kind!r} is not one of {sorted(_TYPES)}")
            if kind == "text":  # keys: VARCHAR(200) (MySQL indexes need a length)
                typ = sa.String(200) if name in key_columns else sa.Text()
            else:
                typ = getattr(sa, _TYPES[kind])()
            cols.append(sa.Column(name, typ, primary_key=name in key_columns))
        cols.append(sa.Column("shardyard_checkpoint", sa.BigInteger, nullable=False))
        self.table = sa.Table(table, meta, *cols)
        self.key_columns = list(key_columns)

        create_tables(self._engine, meta, lambda exc: _unusable(self._engine, "the sink", exc))
        self._dialect = self._engine.dialect.name

    def _upsert(self, rows: list[dict[str, Any]]) -> Any:
        table = self.table
        values = [c.name for c in table.columns if c.name not in self.key_columns]
        if self._dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            pg: Any = pg_insert(table)
            return pg.on_conflict_do_update(
                index_elements=self.key_columns, set_={c: pg.excluded[c] for c in values}
            )
        if self._dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as my_insert

            my: Any = my_insert(table)
            return my.on_duplicate_key_update({c: my.inserted[c] for c in values})
        from sqlalchemy.dialects.sqlite import insert as lite_insert

        lite: Any = lite_insert(table)
        return lite.on_conflict_do_update(
            index_elements=self.key_columns, set_={c: lite.excluded[c] for c in values}
        )

    def write(self, checkpoint_id: int, outputs: list[Any]) -> None:
        latest: dict[tuple[Any, ...], dict[str, Any]] = {}
        for out in outputs:  # the newest output of a key wins (one row per key per write)
            row = {**out, "shardyard_checkpoint": checkpoint_id}
            latest[tuple(row[k] for k in self.key_columns)] = row
        if not latest:
            return
        rows = list(latest.values())
        with self._engine.begin() as conn:
            for start in range(0, len(rows), 1000):
                conn.execute(self._upsert(rows[start : start + 1000]), rows[start : start + 1000])

    def rows(self) -> list[dict[str, Any]]:
        """Every row (for checks and small tables)."""
        with self._engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(self._sa.select(self.table))]

    def close(self) -> None:
        self._engine.dispose()


class DeadLetterTable(Sink):
    """A job's dead letters in a SQL table (created when missing), one row each.

    Columns: ``job``, ``checkpoint`` and ``seq`` (the key: the checkpoint that acknowledged
    it and its place there), ``id`` (the record's id), ``stage`` (``decode``, ``key`` or
    ``handler``), ``error`` (for a handler: shard, key and the original traceback) and
    ``payload`` (the message as text). A checkpoint's rows are replaced in one transaction
    when it is written again (after a crash before its commit): each dead letter is there
    once, identical messages included.

    Example:
        >>> dead = DeadLetterTable("sqlite:///jobs.db", job="totals")   # doctest: +SKIP
        >>> pool.run(source, sink, dead_letters=dead)                   # doctest: +SKIP
    """

    def __init__(self, url: str, job: str, table: str = "shardyard_dead_letters") -> None:
        import sqlalchemy as sa

        self._sa = sa
        self._engine = sa.create_engine(url, pool_pre_ping=True)
        self.job = job
        meta = sa.MetaData()
        self.table = sa.Table(
            table,
            meta,
            sa.Column("job", sa.String(200), primary_key=True),
            sa.Column("checkpoint", sa.BigInteger, primary_key=True),
            sa.Column("seq", sa.Integer, primary_key=True),
            sa.Column("id", sa.Text),
            sa.Column("stage", sa.String(20)),
            sa.Column("error", sa.Text),
            sa.Column("payload", sa.Text),
        )
        create_tables(self._engine, meta, lambda exc: _unusable(self._engine, "dead letters", exc))

    def write(self, checkpoint_id: int, outputs: list[Any]) -> None:
        t = self.table
        rows = [
            {"job": self.job, "checkpoint": checkpoint_id, "seq": n, **letter}
            for n, letter in enumerate(outputs)
        ]
        with self._engine.begin() as conn:
            conn.execute(t.delete().where(t.c.job == self.job, t.c.checkpoint == checkpoint_id))
            if rows:
                conn.execute(t.insert(), rows)

    def rows(self) -> list[dict[str, Any]]:
        """This job's dead letters, in order."""
        t = self.table
        query = self._sa.select(t).where(t.c.job == self.job).order_by(t.c.checkpoint, t.c.seq)
        with self._engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def close(self) -> None:
        self._engine.dispose()
