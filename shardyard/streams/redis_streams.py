"""Redis Streams in: a stream read through a consumer group, acknowledged at checkpoints.

Entries are read with ``XREADGROUP`` (at most ``max_pending`` unacknowledged: a backlog
of millions stays in Redis) and acknowledged with ``XACK`` only once the checkpoint that
covers them is durable. Stream ids only grow, so the checkpoint keeps the last id it
covers: after a crash, the entries still pending for the job's consumer are read again
first, and those up to that id are acknowledged and dropped, never applied twice.

A lost connection is made again; entries a lost ``XREADGROUP`` reply handed to the
consumer are read again from its pending list, so none is stranded.

An entry's value is its ``field`` decoded by the named codec (see
:mod:`shardyard.streams.codecs`); with ``field=None``, the dict of all its fields as text.

Example:
    >>> src = RedisStreamSource("redis://127.0.0.1:6379/0", "events")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from shardyard.errors import SourceError
from shardyard.streams.base import Record, Source
from shardyard.streams.codecs import Codec, decode_record, decoder

__all__ = ["RedisStreamSource"]

_log = logging.getLogger("shardyard.streams")


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RedisStreamSource(Source):
    """The entries of one stream, in id order, through a consumer group.

    Args:
        url: ``redis://[user:password@]host:port/db``.
        stream: the stream's key (it must exist: a missing stream is an error).
        group: the consumer group (created at the stream's start when missing).
        consumer: this job's consumer name in the group (keep it across restarts: its
            pending entries are what a restart reads again).
        codec: how ``field`` is decoded; an entry that fails goes to the dead letters.
        field: the field holding the message (``None``: all fields, as a dict of text).
        max_pending: unacknowledged entries at most (the memory bound).
        idle_timeout_s: end the stream once no entry came for this long (``None``: run
            until stopped).
        reconnect_timeout_s: for how long a lost connection is tried again before the
            job fails with :class:`~shardyard.SourceError`.
    """

    def __init__(
        self,
        url: str,
        stream: str,
        group: str = "shardyard",
        consumer: str = "shardyard",
        codec: Codec = "json",
        field: str | None = "data",
        max_pending: int = 2000,
        idle_timeout_s: float | None = None,
        reconnect_timeout_s: float = 60.0,
    ) -> None:
        try:
            import redis
        except ImportError:  # pragma: no cover - the extra is missing
            raise SourceError(
                'Redis sources need redis-py: pip install "shardyard[redis]"'
            ) from None
        self._redis = redis
        self.url, self.stream, self.group, self.consumer = url, stream, group, consumer
        self._decode = decoder(codec)
        self.field = field
        self.max_pending = max_pending
        self.idle_timeout_s = idle_timeout_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self._covered: tuple[int, int] | None = None  # the last id the restored state holds
        self._cursor = "0"  # read this consumer's pending entries after this id, then ">"
        self._draining = True
        self._epoch: list[str] = []  # ids read since the last acknowledged checkpoint
        self._last_id: str | None = None
        self._last_entry = time.monotonic()
        #: Entries read again after a crash and dropped: their effect was in the state.
        self.duplicates_dropped = 0
        #: How many times a lost connection was made again.
        self.reconnects = 0
        self._client = self._connect()

    def _where(self) -> str:
        kw = self._redis.connection.parse_url(self.url)
        host, port = kw.get("host", "localhost"), kw.get("port", 6379)
        return f"Redis at {host}:{port} (db {kw.get('db', 0)}, user {kw.get('username')!r})"

    def _connect(self) -> Any:
        redis = self._redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No silent retries inside redis-py: a retried XREADGROUP whose reply was lost
        # would strand the entries it handed out; _retry reads them again instead.
        client = redis.Redis.from_url(
            self.url,
            client_name=f"shardyard:{self.stream}",
            socket_timeout=30,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            client.ping()
            if not client.exists(self.stream):
                raise SourceError(f"stream {self.stream!r} on {self._where()} does not exist")
            try:
                client.xgroup_create(self.stream, self.group, id="0")
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        except redis.AuthenticationError as exc:
            raise SourceError(f"{self._where()} refused the login: {exc}") from None
        except redis.ResponseError as exc:
            raise SourceError(f"{self._where()} refused: {exc}") from None
        except redis.ConnectionError as exc:
            raise SourceError(f"cannot connect to {self._where()}: {exc}") from None
        return client

    def _retry(self, command: Callable[[], Any]) -> Any:
        """``command()`` (one that may run twice, like XACK), connecting again while the
        connection is lost."""
        while True:
            try:
                return command()
            except (self._redis.ConnectionError, self._redis.TimeoutError) as exc:
                self._reconnect(exc)

    def _reconnect(self, cause: BaseException) -> None:
        """Wait until Redis answers again (up to ``reconnect_timeout_s``). A lost
        XREADGROUP reply may have handed entries to this consumer: the next read takes its
        pending list again from the last id seen, before any new entry."""
        _log.warning("lost %s (%s); connecting again", self._where(), cause)
        self._draining, self._cursor = True, self._last_id or "0"
        self.reconnects += 1
        deadline = time.monotonic() + self.reconnect_timeout_s
        while True:
            time.sleep(random.uniform(0.2, 0.8))  # jitter: no lockstep with a fault
            self._client.connection_pool.disconnect()
            try:
                self._client.ping()
                return
            except (self._redis.ConnectionError, self._redis.TimeoutError) as exc:
                if time.monotonic() >= deadline:
                    raise SourceError(
                        f"lost {self._where()} and could not connect again within "
                        f"{self.reconnect_timeout_s:g} s: {exc}"
                    ) from None

    def restore(self, position: Any) -> None:
        last = position.get("last_id") if position else None
        self._covered = _order(last) if last else None
        self._last_id = last
        self._draining, self._cursor, self._epoch = True, "0", []

    def read(self, max_records: int) -> list[Record] | None:
        room = min(max_records, self.max_pending - len(self._epoch))
        if room <= 0:
            return []  # the window is full: the job checkpoints, which acknowledges it
        where = self._cursor if self._draining else ">"
        try:  # never retried as it is: a lost reply must be read from the pending list
            reply = self._client.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: where},
                count=room,
                block=None if self._draining else 50,
            )
        except (self._redis.ConnectionError, self._redis.TimeoutError) as exc:
            self._reconnect(exc)
            return []
        entries = reply[0][1] if reply else []
        if self._draining and not entries:
            self._draining = False
            return []
        if not entries:
            quiet = time.monotonic() - self._last_entry
            if self.idle_timeout_s is not None and not self._epoch:
                return None if quiet >= self.idle_timeout_s else []
            return []
        self._last_entry = time.monotonic()
        out: list[Record] = []
        dropped: list[str] = []
        for raw_id, fields in entries:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            if self._draining:
                self._cursor = entry_id
            if self._covered is not None and _order(entry_id) <= self._covered:
                dropped.append(entry_id)  # in the restored checkpoint already
                continue
            if self._last_id is not None and _order(entry_id) <= _order(self._last_id):
                continue  # read again after a lost connection: in this epoch already
            self._epoch.append(entry_id)
            self._last_id = entry_id
            out.append(self._record(entry_id, fields))
        if dropped:
            self._retry(lambda: self._client.xack(self.stream, self.group, *dropped))
            self.duplicates_dropped += len(dropped)
        return out

    def _record(self, entry_id: str, fields: dict[bytes, bytes] | None) -> Record:
        if not fields:  # deleted from the stream (XDEL, XTRIM) before it was read
            error = "the entry was deleted from the stream before it was processed"
            return Record(None, entry_id, payload=b"", error=error)
        if self.field is None:
            text = {k.decode(): v.decode("utf-8", "backslashreplace") for k, v in fields.items()}
            return Record(text, entry_id, payload=json.dumps(text).encode())
        body = fields.get(self.field.encode())
        if body is None:
            names = sorted(k.decode() for k in fields)
            error = f"the entry has no field {self.field!r} (it has {names})"
            return Record(None, entry_id, payload=json.dumps(names).encode(), error=error)
        return decode_record(self._decode, body, entry_id)

    def position(self) -> Any:
        return {"last_id": self._last_id}

    def ack(self, position: Any) -> None:
        ids, self._epoch = self._epoch, []
        for start in range(0, len(ids), 1000):
            self._retry(partial(self._client.xack, self.stream, self.group, *ids[start:][:1000]))

    def close(self) -> None:
        self._client.close()
