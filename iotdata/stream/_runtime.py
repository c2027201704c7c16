"""The stream runtime: a worker that reads a partitioned source, runs a processor over each
partition, writes the outputs to sinks and checkpoints, exactly.

Devices are the key of every source record, so all of a device's readings are in one partition
and operator state splits by partition: the processor (a pipeline's
:class:`~iotdata.stream.PipelineProcessor`) keeps state per partition, restores a partition
from its :class:`~iotdata.stream.Checkpoint` when it is assigned and forgets it when it is
revoked. That is what lets a rebalance move a partition with its state to another worker.

Order of a checkpoint (every ``checkpoint_interval`` seconds, when partitions are revoked, when
the source asks for one, and when the worker stops): every sink flushed, then each partition's
state saved with the offset of the next record, then those offsets committed to the source.
Killed at any point, a worker (this one restarted, or another that takes its partitions)
resumes at the saved offsets with the saved state: records after the checkpoint are processed
again and re-emit the same outputs, which the sinks' idempotent keys absorb.

Backpressure: the worker awaits each sink write before it polls again, so a slow sink slows
consumption and memory stays bounded (a poll's outputs, and each writer's ``flush_rows``). A
retriable sink failure (a database restarting, a :class:`~iotdata.sinks.SinkBackpressureError`)
pauses the worker and is retried until it succeeds or the worker is stopped; a fatal one stops
the worker with that error.

Records a sink refuses (:class:`~iotdata.sinks.BadRowError` at ``write``) are taken out of the
write, the good ones written, and the bad ones dead-lettered, skipped or fatal as the route
says (see :mod:`iotdata.stream._badrows`). Dead letters go to the route's ``dead_letters``
writer, else to the route's own writer when it keeps dead letters, else to standard error
(one JSON line each); they are flushed with the sinks at each checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from iotdata._checks import check_callable, check_instance, each, validated
from iotdata.codec import Decoder, Limits
from iotdata.errors import DecodeError, InvalidInputError, IotDataError
from iotdata.model import Batch
from iotdata.sinks import SinkClosedError, SinkError, SourcePosition
from iotdata.stream._badrows import OpenRoute, Origins, Refusals, Writer, open_routes
from iotdata.stream._checkpoint import Checkpoint, CheckpointStore, MemoryCheckpoints
from iotdata.stream._dedup import Dedup
from iotdata.stream._pipeline import NOTHING, Emitted, Route

if TYPE_CHECKING:
    from iotdata.stream._pipeline import Pipeline

__all__ = ["Processor", "Source", "SourceRecord", "Worker", "WorkerStats", "run_pipeline"]

log = logging.getLogger("iotdata.stream")

_LATENCY_SAMPLES = 10_000
_MAX_PAUSE = 5.0
#: How long a poll waits for records (seconds).
_POLL_TIMEOUT = 0.2


def check_max_records(value: object) -> int:
    """``value`` if it can bound a poll (an int >= 1), else :class:`InvalidInputError`."""
    if type(value) is not int or value < 1:
        raise InvalidInputError(f"max_records must be an int >= 1, not {value!r}")
    return value


def check_seconds(what: str, value: object) -> float:
    """``value`` as seconds (an int or float >= 0, not NaN; ``math.inf``: never), else
    :class:`InvalidInputError`."""
    if not isinstance(value, (int, float)) or type(value) is bool or not value >= 0:
        raise InvalidInputError(f"{what} must be a number of seconds >= 0, not {value!r}")
    return float(value)


def check_flag(what: str, value: object) -> bool:
    if type(value) is not bool:
        raise InvalidInputError(f"{what} must be True or False, not {value!r}")
    return value


def _checkpoint_interval(value: object) -> float:
    return check_seconds("checkpoint_interval", value)


def _tick_interval(value: object) -> float:
    return check_seconds("tick_interval", value)


def _flush_at_end(value: object) -> bool:
    return check_flag("flush_at_end", value)


def check_until(until: object) -> Callable[[WorkerStats], bool] | None:
    if until is not None and not callable(until):
        raise InvalidInputError(f"until must be a function of the statistics, not {until!r}")
    return until


def _has(what: str, value: object, methods: tuple[str, ...]) -> None:
    missing = [m for m in methods if not callable(getattr(value, m, None))]
    if missing:
        raise InvalidInputError(
            f"{what} needs {', '.join(m + '()' for m in methods)}: {value!r:.60} has no "
            f"{', '.join(missing)}"
        )


def check_source(source: object) -> None:
    """A source: ``start``, ``poll``, ``seek``, ``commit`` and ``close``, and a ``topic``."""
    _has("source", source, ("start", "poll", "seek", "commit", "close"))
    if type(getattr(source, "topic", None)) is not str:
        raise InvalidInputError(f"source needs a str topic: {source!r:.60}")


def check_store(checkpoints: object) -> None:
    """A checkpoint store: ``load``, ``save`` and ``close``."""
    _has("checkpoints", checkpoints, ("load", "save", "close"))


def _source(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_source(value)


def _processor(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _has("processor", value, ("process", "tick", "flush", "snapshot", "restore", "forget"))


def _store(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_store(value)


def _route_list(value: object) -> tuple[Route, ...]:
    return tuple(each("routes", value, check_instance, kind=Route))


class Processor(Protocol):
    """What a worker runs: the operators of every assigned partition (see
    :class:`~iotdata.stream.PipelineProcessor`)."""

    def process(self, batch: Batch, partition: int) -> Emitted: ...

    def tick(self, partition: int, now: int) -> Emitted: ...

    def flush(self, partition: int) -> Emitted: ...

    def snapshot(self, partition: int) -> bytes: ...

    def restore(self, partition: int, data: bytes | None) -> None: ...

    def forget(self, partition: int) -> None: ...

    def statistics(self) -> dict[str, int]: ...


@attrs.frozen
class SourceRecord:
    """One record of a partitioned source: a codec frame keyed by device id (or, from an
    in-process source, the batch itself)."""

    topic: str
    partition: int
    offset: int
    value: bytes | Batch
    #: The device id the record was addressed to (Kafka key, MQTT topic), when known.
    key: str | None = None
    #: When the record entered the source (milliseconds since the epoch), when known.
    timestamp_ms: int | None = None


class Listener(Protocol):
    async def revoked(self, partitions: set[int]) -> None: ...

    async def assigned(self, partitions: set[int]) -> None: ...


class Source(Protocol):
    """A partitioned source with consumer-group semantics (Kafka, the embedded log, MQTT)."""

    topic: str

    async def start(self, listener: Listener) -> None:
        """Join; ``listener`` hears of every change of assignment before records flow."""

    async def poll(self, timeout: float, max_records: int) -> list[SourceRecord]: ...

    def seek(self, partition: int, offset: int) -> None: ...

    async def commit(self, offsets: Mapping[int, int]) -> None: ...

    async def close(self) -> None: ...


@attrs.frozen
class WorkerStats:
    """A snapshot of a worker."""

    #: Source records processed, and the readings in them.
    records: int
    readings: int
    #: Records that were not valid frames, or whose device id differed from the one they were
    #: addressed to (skipped, logged).
    undecodable: int
    #: Outputs handed to the sinks.
    aggregates: int
    alerts: int
    #: Late readings (behind the watermark, not aggregated): counted whether or not a late
    #: side output takes them.
    late: int
    checkpoints: int
    #: Retriable sink failures the worker waited out.
    sink_retries: int
    #: Records a sink refused (readings one by one) and their route dead-lettered, or skipped.
    dead_lettered: int
    skipped: int
    partitions: tuple[int, ...]
    #: Seconds from a source record's timestamp to the window results and alerts it caused
    #: being handed to the sinks, over recent records (None before any).
    latency_p50: float | None
    latency_p99: float | None
    #: The processor's counters (``window.late``, ``steps.0.dedup.duplicates``, ...).
    operators: dict[str, int]
    #: Records sinks refused, by problem (``nan``, ``nul``, ``time-range``, ...), whatever
    #: their route did with them.
    bad_rows: dict[str, int] = attrs.field(factory=dict)


@attrs.define(eq=False)
class Worker:
    """Runs a processor over a source, into sinks. One per process or task.

    ``routes`` and ``late`` hold :class:`~iotdata.stream.Route` values over open writers;
    :meth:`Pipeline.run <iotdata.stream.Pipeline.run>` opens a pipeline's sinks and builds
    this for you.
    """

    source: Source = attrs.field(validator=_source)
    processor: Processor = attrs.field(validator=_processor)
    routes: Sequence[Route] = attrs.field(converter=_route_list)
    checkpoints: CheckpointStore = attrs.field(validator=_store)
    late: Sequence[Route] = attrs.field(default=(), converter=_route_list)
    checkpoint_interval: float = attrs.field(
        default=5.0, kw_only=True, converter=_checkpoint_interval
    )
    tick_interval: float = attrs.field(default=1.0, kw_only=True, converter=_tick_interval)
    max_records: int = attrs.field(default=500, kw_only=True, converter=check_max_records)
    limits: Limits = attrs.field(
        factory=Limits, kw_only=True, validator=validated(check_instance, kind=Limits)
    )
    #: Wall clock in microseconds (idle advance, missing data).
    clock: Callable[[], int] = attrs.field(
        default=attrs.Factory(lambda: lambda: time.time_ns() // 1000),
        kw_only=True,
        validator=validated(check_callable),
    )
    #: Close every open window before the last checkpoint (a bounded input).
    flush_at_end: bool = attrs.field(default=False, kw_only=True, converter=_flush_at_end)
    _writers: tuple[OpenRoute, ...] = attrs.field(init=False)
    _late: tuple[OpenRoute, ...] = attrs.field(init=False)
    _next: dict[int, int] = attrs.field(factory=dict, init=False)
    _decoder: Decoder = attrs.field(init=False)
    _stop: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _failure: BaseException | None = attrs.field(default=None, init=False)
    _latencies: deque[float] = attrs.field(
        factory=lambda: deque(maxlen=_LATENCY_SAMPLES), init=False
    )
    _counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys(
            (
                "records",
                "readings",
                "undecodable",
                "aggregates",
                "alerts",
                "late",
                "checkpoints",
                "sink_retries",
            ),
            0,
        ),
        init=False,
    )
    _refusals: Refusals = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._decoder = Decoder(limits=self.limits)
        self._writers = open_routes(self.routes)
        self._late = open_routes(self.late)
        self._refusals = Refusals(self._retrying)

    async def run(self, until: Callable[[WorkerStats], bool] | None = None) -> WorkerStats:
        """Consume until :meth:`stop`, ``until(statistics())`` is true, or a bounded source
        (one with an ``exhausted`` property) is read to its end; checkpoint; return.

        The source is closed on the way out; the sinks are not (they are yours). Cancelled,
        the worker stops where it is, without a checkpoint (as if killed), closing the source.
        """
        until = check_until(until)
        await self.source.start(self)
        last_checkpoint = last_tick = time.monotonic()
        try:
            while not self._stop.is_set():
                polled = time.monotonic()
                records = await self.source.poll(_POLL_TIMEOUT, self.max_records)
                await self._process(records)
                now = time.monotonic()
                if now - last_tick >= self.tick_interval:
                    await self._tick()
                    last_tick = now
                wanted = getattr(self.source, "wants_checkpoint", None)
                if now - last_checkpoint >= self.checkpoint_interval or (wanted and wanted()):
                    await self.checkpoint()
                    last_checkpoint = time.monotonic()
                if until is not None and until(self.statistics()):
                    break
                if not records and getattr(self.source, "exhausted", False):
                    break  # a bounded source, read to its end
                await self._yield(records, polled)
            if self._failure is None:
                if self.flush_at_end:
                    for partition in sorted(self._next):
                        await self._emit(partition, None, [self.processor.flush(partition)])
                await self.checkpoint()
        finally:
            try:
                await self.source.close()
            finally:
                await self._refusals.close()
        if self._failure is not None:
            raise self._failure
        return self.statistics()

    def stop(self) -> None:
        """Ask :meth:`run` to checkpoint and return."""
        self._stop.set()

    async def _yield(self, records: list[SourceRecord], polled: float) -> None:
        """Between two polls, let the event loop run other tasks (and deliver a cancel) even
        when neither the source nor the sinks had to wait; after an empty poll that returned
        before its timeout, wait out the rest of it (a source that never waits would make
        the worker spin)."""
        if records:
            await asyncio.sleep(0)
            return
        left = _POLL_TIMEOUT - (time.monotonic() - polled)
        await self._pause(max(left, 0.0))

    def statistics(self) -> WorkerStats:
        counts = self._counts
        latencies = sorted(self._latencies)
        refusals = self._refusals
        return WorkerStats(
            **counts,
            dead_lettered=refusals.dead_lettered,
            skipped=refusals.skipped,
            partitions=tuple(sorted(self._next)),
            latency_p50=_quantile(latencies, 0.5),
            latency_p99=_quantile(latencies, 0.99),
            operators=self.processor.statistics(),
            bad_rows=dict(refusals.problems),
        )

    async def checkpoint(self, partitions: Iterable[int] | None = None) -> None:
        """Flush the sinks (and the dead letters' writers), save the state of ``partitions``
        (all by default), commit."""
        chosen = sorted(self._next if partitions is None else set(partitions) & set(self._next))
        for writer in self._all_writers():
            await self._retrying(writer.flush, "flush")
        saved = [
            Checkpoint(self.source.topic, p, self._next[p], self.processor.snapshot(p))
            for p in chosen
        ]
        if not saved:
            return
        await self.checkpoints.save(saved)
        await self.source.commit({c.partition: c.offset for c in saved})
        self._counts["checkpoints"] += 1

    def _all_writers(self) -> list[Writer]:
        """Every writer to flush, each once: the routes', then their dead letters'."""
        routes = (*self._writers, *self._late)
        writers: list[Writer] = []
        dead = (*(r.dead for r in routes), self._refusals.stderr)
        for writer in (*(r.writer for r in routes), *dead):
            if writer is not None and not any(writer is w for w in writers):
                writers.append(writer)
        return writers

    # ------------------------------------------------------------------ rebalances

    async def revoked(self, partitions: set[int]) -> None:
        """Before partitions move away: checkpoint them, then forget them."""
        try:
            mine = partitions & set(self._next)
            if mine:
                await self.checkpoint(mine)
            for partition in mine:
                del self._next[partition]
                self.processor.forget(partition)
            log.info("partitions %s of %s revoked", sorted(mine), self.source.topic)
        except BaseException as exc:  # the source would only log it: stop instead
            self._fail(exc)
            raise

    async def assigned(self, partitions: set[int]) -> None:
        """New partitions: restore each from its checkpoint (or start fresh), seek there."""
        try:
            fresh = partitions - set(self._next)
            loaded = await self.checkpoints.load(self.source.topic, fresh)
            for partition in sorted(fresh):
                checkpoint = loaded.get(partition)
                self.processor.restore(partition, None if checkpoint is None else checkpoint.state)
                offset = 0 if checkpoint is None else checkpoint.offset
                self._next[partition] = offset
                self.source.seek(partition, offset)
            log.info("partitions %s of %s assigned", sorted(fresh), self.source.topic)
        except BaseException as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: BaseException) -> None:
        log.error("stream worker stopping: %s", exc)
        if self._failure is None:
            self._failure = exc
        self._stop.set()

    # ------------------------------------------------------------------ processing

    async def _process(self, records: list[SourceRecord]) -> None:
        """Run the records through the processor, one write per partition and sink."""
        start = 0
        while start < len(records):
            partition = records[start].partition
            end = start + 1
            while end < len(records) and records[end].partition == partition:
                end += 1
            await self._partition(partition, records[start:end])
            start = end

    async def _partition(self, partition: int, records: list[SourceRecord]) -> None:
        outputs: list[tuple[Emitted, int | None]] = []
        first: SourceRecord | None = None
        stamps: list[int] = []
        counts = self._counts
        processor = self.processor
        for record in records:
            expected = self._next.get(partition)
            if expected is None or record.offset < expected:
                continue  # not ours any more, or already in the restored state
            self._next[partition] = record.offset + 1
            counts["records"] += 1
            batch = self._decode(record)
            if batch is None:
                continue
            counts["readings"] += len(batch)
            try:
                out = processor.process(batch, partition)
            except IotDataError:
                raise
            except Exception as exc:
                where = f"{record.topic}-{record.partition}@{record.offset}"
                raise IotDataError(f"processing {where} failed: {exc!r}") from exc
            if out:
                if first is None:
                    first = record
                outputs.append((out, record.offset))
                if (out.aggregates or out.alerts) and record.timestamp_ms is not None:
                    stamps.append(record.timestamp_ms)
        if first is None:
            return
        position = SourcePosition(first.topic, partition, first.offset)
        await self._emit(partition, position, outputs)
        if stamps:
            now_ms = time.time() * 1000
            self._latencies.extend((now_ms - stamp) / 1000 for stamp in stamps)

    def _decode(self, record: SourceRecord) -> Batch | None:
        value = record.value
        if type(value) is Batch:
            return value
        try:
            batch = self._decoder.decode(value)  # type: ignore[arg-type]
        except DecodeError as exc:
            reason = str(exc)
        else:
            if record.key is None or record.key == batch.device_id:
                return batch
            reason = f"a frame of {batch.device_id!r} addressed to {record.key!r}"
        self._counts["undecodable"] += 1
        log.warning("skipped %s-%s@%s: %s", record.topic, record.partition, record.offset, reason)
        return None

    async def _tick(self) -> None:
        now = self.clock()
        for partition in sorted(self._next):
            out = self.processor.tick(partition, now)
            if out:
                await self._emit(partition, None, [out])

    async def _emit(
        self,
        partition: int,
        position: SourcePosition | None,
        outputs: Sequence[Emitted | tuple[Emitted, int | None]],
    ) -> None:
        """Hand the outputs (each with the offset of its source record, when it has one) to
        the routes that take their kinds."""
        pairs = [o if isinstance(o, tuple) else (o, None) for o in outputs]
        pairs = [(o, offset) for o, offset in pairs if o is not NOTHING]
        if not pairs:
            return
        kinds: dict[str, list[Any]] = {
            "readings": [b for o, _ in pairs for b in o.readings],
            "aggregates": [a for o, _ in pairs for a in o.aggregates],
            "alerts": [a for o, _ in pairs for a in o.alerts],
        }
        late = [b for o, _ in pairs for b in o.late]
        counts = self._counts
        counts["aggregates"] += len(kinds["aggregates"])
        counts["alerts"] += len(kinds["alerts"])
        counts["late"] += sum(len(b) for b in late)
        topic = self.source.topic if position is None else position.topic
        for route in self._writers:
            chosen = [r for kind in route.kinds for r in kinds.get(kind, ())]
            if chosen:
                origins = Origins(topic, partition, pairs, tuple(route.kinds))
                await self._write(route, chosen, position, origins)
        for route in self._late if late else ():
            await self._write(route, late, position, Origins(topic, partition, pairs, ("late",)))

    async def _write(
        self,
        route: OpenRoute,
        records: list[Any],
        position: SourcePosition | None,
        origins: Origins,
    ) -> None:
        await self._refusals.write(route, records, position, origins)

    async def _retrying(self, operation: Callable[[], Awaitable[None]], what: str) -> None:
        """``operation``, again after each retriable sink failure (the worker pauses: that is
        the backpressure), until it succeeds or the worker is stopped."""
        attempt = 0
        while True:
            try:
                await operation()
                return
            except SinkError as exc:  # noqa: PERF203 (a retry loop)
                if not exc.retriable or isinstance(exc, SinkClosedError) or self._stop.is_set():
                    raise
                attempt += 1
                self._counts["sink_retries"] += 1
                pause = min(_MAX_PAUSE, random.uniform(0, 0.05 * 2**attempt))
                pause = max(pause, getattr(exc, "retry_after", 0.0))
                log.warning("sink %s failed (%s); trying again in %.2f s", what, exc, pause)
                await self._pause(pause)

    async def _pause(self, seconds: float) -> None:
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({stopping}, timeout=seconds)
        finally:
            stopping.cancel()


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_pipeline(
    pipeline: Pipeline,
    source: Source,
    *,
    checkpoints: CheckpointStore | None,
    checkpoint_interval: float,
    until: Callable[[WorkerStats], bool] | None,
    flush_at_end: bool,
    max_records: int = 500,
) -> WorkerStats:
    """What :meth:`Pipeline.run <iotdata.stream.Pipeline.run>` does."""
    check_source(source)
    if checkpoints is not None:
        check_store(checkpoints)
    checkpoint_interval = _checkpoint_interval(checkpoint_interval)
    flush_at_end = _flush_at_end(flush_at_end)
    max_records = check_max_records(max_records)
    until = check_until(until)
    if getattr(source, "redelivers", False):
        if not pipeline.steps or not isinstance(pipeline.steps[0], Dedup):
            raise InvalidInputError(
                f"{type(source).__name__} sends messages again after a restart: start the "
                "pipeline with .dedup() so that each (device_id, seq) counts once"
            )
        if checkpoints is None:
            raise InvalidInputError(
                f"{type(source).__name__} needs a checkpoint store that survives a restart, "
                "such as checkpoints=FileCheckpoints('state')"
            )
    owned = checkpoints is None
    if checkpoints is None:
        default = getattr(source, "default_checkpoints", None)
        checkpoints = await default() if default is not None else MemoryCheckpoints()
    opened: list[tuple[Any, Any]] = []
    try:
        routes = [await _open(route, opened) for route in pipeline.routes]
        late = [await _open(route, opened) for route in pipeline.late_routes]
        worker = Worker(
            source,
            pipeline.processor(),
            routes,
            checkpoints,
            late,
            checkpoint_interval=checkpoint_interval,
            flush_at_end=flush_at_end,
            max_records=max_records,
        )
        return await worker.run(until)
    finally:
        for _, writer in reversed(opened):
            await writer.close()
        if owned:
            await checkpoints.close()


async def _open(route: Route, opened: list[tuple[Any, Any]]) -> Route:
    """``route`` over writers: its sink, and its dead letters' (each configuration opened
    once, however many routes name it)."""
    sink = await _writer(route.sink, opened)
    dead = None if route.dead_letters is None else await _writer(route.dead_letters, opened)
    return attrs.evolve(route, sink=sink, dead_letters=dead)


async def _writer(sink: Any, opened: list[tuple[Any, Any]]) -> Any:
    if callable(getattr(sink, "write", None)):
        return sink
    for config, writer in opened:
        if config is sink:
            return writer
    writer = await sink.open()
    opened.append((sink, writer))
    return writer
