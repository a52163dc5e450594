"""How a source turns the bytes of a message into the value a handler gets.

Messages come from outside the cluster, so they are decoded, never unpickled. A codec is
one of:

- ``"json"``: one JSON value (UTF-8);
- ``"text"``: the UTF-8 text;
- ``"bytes"``: the bytes as they are;
- a pydantic model class: the JSON validated into an instance of it;
- a function of the bytes (anything it raises makes the message a dead letter).

A message that fails to decode does not stop the stream: its :class:`Record` carries the
error and the payload, and the job sends it to the dead letters (and acknowledges it with
the rest of its checkpoint).

Example:
    >>> from pydantic import BaseModel
    >>> class Event(BaseModel):
    ...     key: str
    ...     value: int
    >>> decode = decoder(Event)
    >>> decode_record(decode, b'{"key": "a", "value": 1}', "m1").value
    Event(key='a', value=1)
    >>> decode_record(decode, b'{"key": "a"}', "m2").error.splitlines()[0]
    'ValidationError: 1 validation error for Event'
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from shardyard.streams.base import Record

__all__ = ["Codec", "decode_record", "decoder"]

#: What names a codec (see the module doc).
Codec = Literal["json", "text", "bytes"] | type | Callable[[bytes], Any]


def _json(body: bytes) -> Any:
    return json.loads(body.decode("utf-8"))  # UTF-8, as RFC 8259 asks: no sniffing


def _text(body: bytes) -> str:
    return body.decode("utf-8")


def _bytes(body: bytes) -> bytes:
    return body


def decoder(codec: Codec) -> Callable[[bytes], Any]:
    """The function that decodes one message body with ``codec``.

    Raises:
        ValueError: ``codec`` names no codec.
    """
    if codec == "json":
        return _json
    if codec == "text":
        return _text
    if codec == "bytes":
        return _bytes
    if isinstance(codec, type):
        validate = getattr(codec, "model_validate_json", None)
        if validate is None:
            raise ValueError(f"codec {codec.__name__} is a class but not a pydantic model")
        return validate
    if callable(codec):
        return codec
    raise ValueError(f"unknown codec {codec!r}: use 'json', 'text', 'bytes', a model or a function")


def decode_record(decode: Callable[[bytes], Any], body: bytes, record_id: str | None) -> Record:
    """``body`` decoded into a :class:`Record`, or a record carrying the decoding error."""
    try:
        return Record(decode(body), record_id, payload=body)
    except Exception as exc:
        return Record(None, record_id, payload=body, error=f"{type(exc).__name__}: {exc}")
