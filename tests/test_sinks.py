"""MapSink: one lock for a reply's segments; a delivery that fails ends its items."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from shardyard.scheduler.segments import Segment
from shardyard.scheduler.sinks import MapSink


def test_deliver_many_delivers_every_segment_and_logs_a_failing_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = MapSink(max_pending=100, keep=True)
    sink.add(6)
    good = Segment(sink, np.array([0, 1]), [10, 11], None)
    bad = Segment(sink, np.array([2, 3]), [12, 13], None)
    failing = Segment(sink, np.array([4, 5]), [14, 15], None)
    err = RuntimeError("boom")
    with caplog.at_level(logging.ERROR):
        sink.deliver_many(
            [
                (0, good, [20, 21], []),
                (1, bad, [22, 23], [(7, err)]),  # an offset past the segment: a bug
                (2, failing, [None, 25], [(0, err)]),
            ]
        )
    # The failing one's items end too, with the error that broke their delivery: every item
    # ends, so a map neither hangs nor returns without them.
    assert "delivering results of shard 1 failed" in caplog.text
    assert [(p.tolist(), o) for p, o in sink.pieces] == [([0, 1], [20, 21]), ([5], [25])]
    assert [p for p, _ in sink.errors] == [2, 3, 4] and sink.finished == 6
    assert isinstance(sink.errors[0][1], IndexError) and sink.errors[2][1] is err
    assert sink.all_done()
