"""The console sink: records as lines on a text stream, for development and demos.

It prints what it is given at each flush and keeps nothing, so it is at-least-once: a replay
prints again. Dead letters (records a sink refused) go to their own stream, standard error by
default, so that standard output stays the data.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from typing import Literal, TextIO

import attrs

from iotdata.errors import InvalidInputError
from iotdata.model import ts_to_datetime
from iotdata.sinks import _settings as valid
from iotdata.sinks._errors import SinkFatalError
from iotdata.sinks._json import dead_letter_json, record_fields
from iotdata.sinks._records import Alert, DeadLetter, PendingRecords, WindowAggregate
from iotdata.sinks._retry import RetryPolicy
from iotdata.sinks._writer import BufferedWriter, Opening

__all__ = ["ConsoleSink", "ConsoleWriter"]


def _format(_self: object, _attribute: object, value: object) -> None:
    if value not in ("text", "json"):
        raise InvalidInputError(f"format must be 'text' or 'json', not {value!r:.60}")


@attrs.frozen(kw_only=True)
class ConsoleSink:
    """Print records on ``stream`` (default: standard output at open).

    ``format="text"`` writes one readable line per record; ``"json"`` one JSON object per line
    with a ``kind`` of ``reading``, ``aggregate`` or ``alert`` (times in microseconds; an
    aggregate's ``extra`` as an object). Dead letters go to ``dead_letter_stream`` (default:
    standard error at open), as a line each (``kind`` ``dead_letter`` in JSON).
    """

    stream: TextIO | None = attrs.field(default=None, validator=valid.stream)
    format: Literal["text", "json"] = attrs.field(default="text", validator=_format)
    flush_rows: int = attrs.field(default=10_000, validator=valid.flush_rows)
    dead_letter_stream: TextIO | None = attrs.field(default=None, validator=valid.stream)

    def open(self) -> Opening[ConsoleWriter]:
        """Await the result for a writer, or use it with ``async with``."""
        return Opening(self._open)

    async def _open(self) -> ConsoleWriter:
        return ConsoleWriter(self, self.stream if self.stream is not None else sys.stdout)


class ConsoleWriter(BufferedWriter):
    """The writer of a :class:`ConsoleSink`."""

    stores_dead_letters = True

    def __init__(self, sink: ConsoleSink, stream: TextIO) -> None:
        super().__init__(name="ConsoleSink", flush_rows=sink.flush_rows, retry=RetryPolicy.never())
        self._stream = stream
        self._dead = sink.dead_letter_stream if sink.dead_letter_stream is not None else sys.stderr
        self._lines = _json_lines if sink.format == "json" else _text_lines
        self._letter = dead_letter_json if sink.format == "json" else _letter_text

    async def persist(self, pending: PendingRecords) -> None:
        try:
            self._stream.writelines(self._lines(pending))
            self._stream.flush()
            letters = pending.dead_letters()
            if letters:
                self._dead.writelines(self._letter(letter) + "\n" for letter in letters)
                self._dead.flush()
        except (OSError, ValueError) as exc:  # a closed pipe, a closed file
            raise SinkFatalError(f"cannot write to the console: {exc}") from exc


def _text_lines(pending: PendingRecords) -> Iterator[str]:
    for column in pending.columns():
        col = column.column
        for ts, value, seq in zip(col.ts, col.values, col.seq, strict=True):
            yield f"{_time(ts)} {column.device_id} {col.metric}={value!r} seq={seq}\n"
    for g in pending.aggregates():
        extra = "".join(f" {name}={value!r}" for name, value in g.extra.items())
        yield (
            f"{_time(g.window_start)}..{_time(g.window_end)} {g.device_id} {g.metric} "
            f"count={g.count} min={g.min!r} max={g.max!r} mean={g.mean!r}{extra} "
            f"rev={g.revision}\n"
        )
    for a in pending.alerts():
        about = "" if a.metric is None else f" {a.metric}={a.value!r}"
        message = f" {a.message}" if a.message else ""
        yield (
            f"{_time(a.ts)} ALERT {a.severity} {a.device_id} {a.detector}{about} "
            f"score={a.score!r}{message}\n"
        )


def _json_lines(pending: PendingRecords) -> Iterator[str]:
    for column in pending.columns():
        col = column.column
        device, metric = column.device_id, col.metric
        for ts, value, seq in zip(col.ts, col.values, col.seq, strict=True):
            reading = {"device_id": device, "metric": metric, "ts": ts, "value": value, "seq": seq}
            yield _line({"kind": "reading", **reading})
    records: list[WindowAggregate | Alert] = [*pending.aggregates(), *pending.alerts()]
    for record in records:
        yield _line(record_fields(record))


def _letter_text(letter: DeadLetter) -> str:
    at = letter.position
    where = "" if at is None else f" from {at.topic}-{at.partition}@{at.offset}"
    return (
        f"DEAD LETTER {letter.kind} {letter.key} refused by {letter.sink}{where}: "
        f"{letter.reason}: {letter.detail}"
    )


def _line(document: Mapping[str, object]) -> str:
    """One line; NaN and infinities are written as Python's json writes them (NaN, Infinity)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n"


def _time(ts: int) -> str:
    try:
        return ts_to_datetime(ts).isoformat().replace("+00:00", "Z")
    except InvalidInputError:  # outside the years 1 to 9999
        return f"{ts}us"
