"""The console sink: conformance (at least once), text and JSON lines."""

from __future__ import annotations

import asyncio
import io
import json

from iotdata.model import Batch
from iotdata.sinks import Alert, ConsoleSink, WindowAggregate
from iotdata.testing import check_sink
from tests.sinks._readers import console_contents


def test_console_sink_passes_the_conformance_check_at_least_once() -> None:
    stream = io.StringIO()
    sink = ConsoleSink(stream=stream, format="json")
    asyncio.run(
        check_sink(
            sink.open, read_back=lambda: console_contents(stream.getvalue()), exactly_once=False
        )
    )


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
