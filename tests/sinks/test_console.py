"""The console sink: conformance (at least once), text and JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
import math

import pytest

from iotdata.model import Batch, Reading
from iotdata.sinks import (
    Alert,
    ConsoleSink,
    DeadLetter,
    SinkFatalError,
    SourcePosition,
    WindowAggregate,
)
from iotdata.testing import SinkContents, check_sink
from tests.sinks._readers import console_contents


def test_console_sink_passes_the_conformance_check_at_least_once() -> None:
    stream, dead = io.StringIO(), io.StringIO()
    sink = ConsoleSink(stream=stream, format="json", dead_letter_stream=dead)

    def read_back() -> SinkContents:
        return console_contents(stream.getvalue(), dead.getvalue())

    asyncio.run(check_sink(sink.open, read_back=read_back, exactly_once=False))
    assert dead.getvalue() and "dead_letter" not in stream.getvalue()


def test_text_lines_are_readable() -> None:
    stream = io.StringIO()

    async def scenario() -> None:
        async with ConsoleSink(stream=stream).open() as writer:
            await writer.write(Batch.from_columns("dev-1", {"temp": ([0], [21.5], [7])}))
            await writer.write(WindowAggregate("dev-1", "temp", 0, 60_000_000, 2, 1.0, 3.0, 4.0))
            await writer.write(Alert("dev-1", "zscore", 1_000_000, "temp", 99.0, 5.5, "critical"))

    asyncio.run(scenario())
    assert stream.getvalue().splitlines() == [
        "1970-01-01T00:00:00Z dev-1 temp=21.5 seq=7",
        "1970-01-01T00:00:00Z..1970-01-01T00:01:00Z dev-1 temp count=2 min=1.0 max=3.0 "
        "mean=2.0 rev=0",
        "1970-01-01T00:00:01Z ALERT critical dev-1 zscore temp=99.0 score=5.5",
    ]


def test_aggregates_show_their_extra_statistics() -> None:
    aggregate = WindowAggregate("dev-1", "temp", 0, 60_000_000, 2, 1.0, 3.0, 4.0, 1, {"p99": 2.9})
    text, lines = io.StringIO(), io.StringIO()

    async def scenario() -> None:
        for stream, form in ((text, "text"), (lines, "json")):
            async with ConsoleSink(stream=stream, format=form).open() as writer:  # type: ignore[arg-type]
                await writer.write(aggregate)

    asyncio.run(scenario())
    assert text.getvalue().endswith("mean=2.0 p99=2.9 rev=1\n")
    assert json.loads(lines.getvalue())["extra"] == {"p99": 2.9}
    assert console_contents(lines.getvalue()).aggregates == [aggregate]


def test_dead_letters_go_to_their_own_stream_and_a_dead_stream_is_fatal() -> None:
    stream, dead = io.StringIO(), io.StringIO()
    nan = Reading("dev-1", "temp", 0, math.nan, 7)
    letter = DeadLetter(nan, "nan", "no NaN", "SqliteSink('x')", SourcePosition("t", 0, 3))

    async def scenario() -> None:
        sink = ConsoleSink(stream=stream, dead_letter_stream=dead)
        async with sink.open() as writer:
            await writer.write([Batch.from_columns("dev-1", {"temp": ([0], [21.5], [6])}), letter])
        closed = io.StringIO()
        closed.close()
        writer = await ConsoleSink(stream=closed).open()
        await writer.write(Batch.from_columns("dev-1", {"temp": ([0], [21.5], [6])}))
        with pytest.raises(SinkFatalError, match="cannot write to the console"):
            await writer.flush()
        await writer.close()

    asyncio.run(scenario())
    assert stream.getvalue() == "1970-01-01T00:00:00Z dev-1 temp=21.5 seq=6\n"
    assert dead.getvalue() == (
        "DEAD LETTER reading dev-1/7 refused by SqliteSink('x') from t-0@3: nan: no NaN\n"
    )
