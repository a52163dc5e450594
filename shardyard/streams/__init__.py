"""Streaming jobs: sources in, sinks out, acknowledged and committed at checkpoints.

``pool.run(source, sink, key=...)`` reads records, maps them through the pool (keyed
records to their shards, in order), and every ``checkpoint_interval_s`` writes the
outputs under the next checkpoint id, stores every shard's state with the source's
position as one checkpoint, then acknowledges the source. Started again after a crash
with the same ``name`` and ``store``, it resumes from the newest complete checkpoint:
shard state, source position and sink parts agree, so nothing is lost or applied twice.

Sources: :class:`FileSource` here, ``RabbitMQSource`` (:mod:`shardyard.streams.rabbitmq`,
extra ``rabbitmq``), ``RedisStreamSource`` (:mod:`shardyard.streams.redis_streams`, extra
``redis``). Sinks: :class:`FileSink`, ``SqlUpsertSink`` and ``DeadLetterTable``
(:mod:`shardyard.streams.sql`, extras ``postgres``/``mysql``/``sql``).

Example:
    >>> from shardyard.streams import FileSink, FileSource
    >>> pool.run(FileSource("in/*.txt"), FileSink("out"), key=str.split)  # doctest: +SKIP
"""

from shardyard.streams.base import Record, Sink, Source
from shardyard.streams.codecs import Codec, decoder
from shardyard.streams.files import FileSink, FileSource
from shardyard.streams.job import RunReport, request_stop

__all__ = [
    "Codec",
    "FileSink",
    "FileSource",
    "Record",
    "RunReport",
    "Sink",
    "Source",
    "decoder",
    "request_stop",
]
