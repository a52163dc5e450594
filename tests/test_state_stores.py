"""Snapshot stores by URL, on the real servers: complete checkpoints or none at all."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import services

from shardyard.state import (
    IncompleteCheckpointError,
    StateStore,
    StateStoreError,
    open_store,
)

KINDS = ["memory", "file", "sqlite", "postgresql", "mariadb"]


@pytest.fixture(params=KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return services.store_url(request.param, tmp_path)


@pytest.fixture
def store(store_url: str) -> Iterator[StateStore]:
    with open_store(store_url) as s:
        yield s


@pytest.fixture
def pool() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"  # tests share the databases: their own names


def test_a_complete_checkpoint_round_trips_and_survives_reopening(
    store: StateStore, store_url: str, pool: str
) -> None:
    assert store.latest(pool) is None and store.next_id(pool) == 1
    for sid in range(3):
        store.put_part(pool, 1, sid, f"state {sid}".encode())
    store.commit(pool, 1, 3, b"offsets")
    with open_store(store_url) as again:  # a new driver: the same data
        last = again.latest(pool)
        assert last is not None
        assert (last.checkpoint_id, last.num_shards, last.meta) == (1, 3, b"offsets")
        parts = [again.get_part(pool, 1, s) for s in range(3)]
        assert parts == [b"state 0", b"state 1", b"state 2"]
        assert again.next_id(pool) == 2


def test_an_interrupted_checkpoint_is_never_used(store: StateStore, pool: str) -> None:
    store.put_part(pool, 1, 0, b"a1")
    store.put_part(pool, 1, 1, b"b1")
    store.commit(pool, 1, 2)
    store.put_part(pool, 2, 0, b"a2")  # shard 1's snapshot failed: no part
    with pytest.raises(IncompleteCheckpointError, match="not committed"):
        store.commit(pool, 2, 2)
    last = store.latest(pool)
    assert last is not None and last.checkpoint_id == 1
    assert store.get_part(pool, 1, 0) == b"a1"


def test_a_retried_part_replaces_the_first(store: StateStore, pool: str) -> None:
    store.put_part(pool, 1, 0, b"first try")
    store.put_part(pool, 1, 0, b"second")
    store.commit(pool, 1, 1)
    assert store.get_part(pool, 1, 0) == b"second"


def test_large_parts_and_empty_parts(store: StateStore, pool: str) -> None:
    big = os.urandom(9 << 20)  # over 2 chunks in SQL stores
    store.put_part(pool, 1, 0, big)
    store.put_part(pool, 1, 1, b"")
    store.commit(pool, 1, 2)
    assert store.get_part(pool, 1, 0) == big
    assert store.get_part(pool, 1, 1) == b""
    with pytest.raises(KeyError):
        store.get_part(pool, 1, 2)


def test_pools_are_kept_apart(store: StateStore, pool: str) -> None:
    other = pool + "/other name"
    store.put_part(pool, 1, 0, b"mine")
    store.commit(pool, 1, 1)
    assert store.latest(other) is None
    store.put_part(other, 5, 0, b"theirs")
    store.commit(other, 5, 1)
    assert store.get_part(pool, 1, 0) == b"mine"
    assert store.latest(other).checkpoint_id == 5  # type: ignore[union-attr]


def test_prune_keeps_the_newest_complete_checkpoints(store: StateStore, pool: str) -> None:
    for cid in range(1, 5):
        store.put_part(pool, cid, 0, str(cid).encode())
        store.commit(pool, cid, 1)
    store.put_part(pool, 5, 0, b"unfinished")
    store.prune(pool, keep=2)
    last = store.latest(pool)
    assert last is not None and last.checkpoint_id == 4
    assert store.get_part(pool, 3, 0) == b"3"
    for gone in (1, 2):
        with pytest.raises(KeyError):
            store.get_part(pool, gone, 0)
    assert store.get_part(pool, 5, 0) == b"unfinished"  # newer than the newest complete one


def test_parts_written_from_several_threads(store: StateStore, pool: str) -> None:
    errors: list[BaseException] = []

    def put(sid: int) -> None:
        try:
            store.put_part(pool, 1, sid, bytes([sid]) * 1000)
        except BaseException as exc:  # surfaced below: a thread's error must fail the test
            errors.append(exc)

    for _ in range(3):  # concurrent writers deadlock in InnoDB now and then: retried
        threads = [threading.Thread(target=put, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    store.commit(pool, 1, 8)
    assert all(store.get_part(pool, 1, s) == bytes([s]) * 1000 for s in range(8))


def test_a_wrong_password_names_the_server() -> None:
    services.require("mariadb")
    with pytest.raises(StateStoreError) as err:
        open_store("mysql+pymysql://root:wrong-password@127.0.0.1:3306/test")
    text = str(err.value)
    assert "mysql at 127.0.0.1:3306" in text and "Access denied" in text
    assert "wrong-password" not in text


def test_a_missing_database_and_a_closed_port_name_the_server() -> None:
    services.require("postgresql")
    with pytest.raises(StateStoreError, match=r"postgresql at 127.0.0.1:5432 .*no_such_db"):
        open_store("postgresql+psycopg://postgres@127.0.0.1:5432/no_such_db")
    with pytest.raises(StateStoreError, match=r"postgresql at 127.0.0.1:1 "):
        open_store("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=3")


def test_an_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(StateStoreError, match=r"file:///dir, sqlite:///path\.db"):
        open_store("s3://bucket/x")
