"""Pipelines: the operators of a stream, composed in application code.

A :class:`Pipeline` is a frozen value; each method returns a new one::

    pipeline = (
        Pipeline()
        .dedup()
        .filter(lambda reading: reading.metric == "temperature")
        .window(Tumbling(timedelta(minutes=1)), Count(), Mean(), grace=timedelta(seconds=10))
        .detect(ZScore(), MissingData(timeout=timedelta(minutes=5)))
        .to(SqliteSink(path="iot.sqlite"))
    )

Data meets its parts in this order:

1. **steps** (:meth:`~Pipeline.filter`, :meth:`~Pipeline.map`, :meth:`~Pipeline.flat_map`,
   :meth:`~Pipeline.dedup`, or any :class:`~iotdata.stream.BatchStep` with
   :meth:`~Pipeline.step`), run on every batch one after the other;
2. at most one **window** (:meth:`~Pipeline.window`), keyed by device and metric, device or
   metric, and any number of **detectors** (:meth:`~Pipeline.detect`); each sees every batch the
   steps let through;
3. **routes** (:meth:`~Pipeline.to`): the sinks, each with the kinds of records it takes
   (``"readings"``: the batches after the steps, ``"aggregates"``, ``"alerts"``) and what
   happens to the records it refuses (dead letters by default, see :class:`Route`), and the
   side output for late readings (:meth:`~Pipeline.late_to`).

:meth:`Pipeline.processor` builds the pure core the runtime runs (:class:`PipelineProcessor`:
batches in, :class:`Emitted` records out, state per source partition, snapshots);
:meth:`Pipeline.run` runs it over a source as a :class:`~iotdata.stream.Worker`.

Time-driven outputs use two clocks. A window with an ``idle_timeout`` closes the last windows
of a partition that stopped receiving readings (see :class:`~iotdata.stream.WindowOperator`).
Detectors with time-driven alerts (:class:`~iotdata.stream.MissingData`) run on the partition's
*event clock*: the newest ``ts`` seen in the partition minus the window's ``grace`` (the
watermark: readings of other devices up to that far behind are not a silence), after every
batch; and, once the partition has been quiet for the pipeline's ``idle_timeout`` of wall-clock
time, that plus the quiet time, so a device that goes silent with its whole partition is still
reported.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import msgpack

from iotdata._checks import check_instance, check_iterable, each, optional
from iotdata.errors import InvalidInputError
from iotdata.model import Batch
from iotdata.sinks import ALL_KINDS, Alert, RecordKind, WindowAggregate
from iotdata.stream._aggregations import Aggregation
from iotdata.stream._badrows import BadRows, check_bad_rows
from iotdata.stream._common import (
    Duration,
    check_batch,
    check_now,
    check_partition,
    name_of,
    optional_micros,
)
from iotdata.stream._dedup import Dedup
from iotdata.stream._errors import SnapshotError, StreamOperatorError
from iotdata.stream._steps import BatchStep, Chain, Filter, FlatMap, Map
from iotdata.stream._windowed import WindowOperator
from iotdata.stream._windows import Hopping, Session, Tumbling

if TYPE_CHECKING:
    from iotdata.stream._checkpoint import CheckpointStore
    from iotdata.stream._runtime import Source, WorkerStats

__all__ = ["Detector", "Emitted", "Pipeline", "PipelineProcessor", "Route"]

_STATE_FORMAT = "iotdata.pipeline"
_STATE_VERSION = 1


@runtime_checkable
class Detector(Protocol):
    """What :meth:`Pipeline.detect` takes: the built-in detectors, or your own."""

    name: str

    def process(self, batch: Batch, partition: int = 0) -> Sequence[Alert]: ...

    def advance(self, partition: int, now: int) -> Sequence[Alert]: ...

    def snapshot(self, partitions: Iterable[int] | None = None) -> bytes: ...

    def restore(self, data: bytes) -> None: ...

    def forget(self, partitions: Iterable[int]) -> None: ...

    def statistics(self) -> dict[str, int]: ...


@attrs.frozen
class Emitted:
    """What a processor gives back for one batch or one tick."""

    #: The batches the steps let through (for sinks that take ``"readings"``).
    readings: tuple[Batch, ...] = ()
    #: Windows closed (and, with ``emit_updates``, updated).
    aggregates: tuple[WindowAggregate, ...] = ()
    alerts: tuple[Alert, ...] = ()
    #: Readings behind the watermark: not aggregated, for the late side output.
    late: tuple[Batch, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.readings or self.aggregates or self.alerts or self.late)


NOTHING = Emitted()


def _kinds(value: Iterable[str] | None) -> frozenset[RecordKind] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    items = check_iterable("kinds", value)
    if not items or not all(type(k) is str and k in ALL_KINDS for k in items):
        raise InvalidInputError(f"kinds must be some of {sorted(ALL_KINDS)}, not {value!r:.60}")
    return frozenset(items)


@attrs.frozen
class Route:
    """Where a pipeline's records go: a sink (a configuration with ``open()``, or a writer you
    opened yourself) and the record kinds it takes (None: every kind its writer stores).

    ``bad_rows`` says what happens to the records the sink refuses (its
    :class:`~iotdata.sinks.BadRowError`): ``"dead-letter"`` (the default) writes each, with
    why, to ``dead_letters`` (a sink or writer; None: the sink's own dead letters, or standard
    error for a sink that keeps none), ``"skip"`` counts and logs them, ``"stop"`` stops the
    worker with the error. The good records of the same write are stored either way.
    """

    sink: Any
    kinds: frozenset[RecordKind] | None = attrs.field(default=None, converter=_kinds)
    bad_rows: BadRows = attrs.field(default="dead-letter", kw_only=True, converter=check_bad_rows)
    dead_letters: Any = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        _check_sink(self.sink)
        if self.dead_letters is None:
            return
        if self.bad_rows != "dead-letter":
            raise InvalidInputError(
                f"dead_letters is where dead letters go: it needs bad_rows='dead-letter', "
                f"not {self.bad_rows!r}"
            )
        _check_sink(self.dead_letters, "dead_letters")


def _idle(value: object) -> int | None:
    return optional_micros("idle_timeout", value)


def _check_step(step: object) -> BatchStep:
    if not isinstance(step, BatchStep):
        raise InvalidInputError(f"a step needs a name and process(batch, partition): {step!r}")
    return step


def _name(value: object) -> str:
    return name_of("name", value)


def _steps(value: object) -> tuple[BatchStep, ...]:
    return tuple(_check_step(step) for step in check_iterable("steps", value))


def _detectors(value: object) -> tuple[Detector, ...]:
    detectors = tuple(check_iterable("detectors", value))
    for detector in detectors:
        if not isinstance(detector, Detector):
            raise InvalidInputError(f"not a detector: {detector!r:.60}")
    return detectors


def _routes(value: object) -> tuple[Route, ...]:
    return tuple(each("routes", value, check_instance, kind=Route))


def _check_sink(sink: object, what: str = "a sink") -> object:
    writer = callable(getattr(sink, "write", None)) and callable(getattr(sink, "flush", None))
    if not writer and not callable(getattr(sink, "open", None)):
        raise InvalidInputError(f"{what} needs open(), or write() and flush(): {sink!r}")
    return sink


@attrs.frozen
class Pipeline:
    """Steps, a window, detectors and routes (see the module docstring). Immutable: every
    method returns a new pipeline, so one value can build many workers."""

    name: str = attrs.field(default="pipeline", converter=_name)
    #: Wall-clock time a partition must be quiet before its event clock runs on (see the
    #: module docstring); the default ``idle_timeout`` of :meth:`window`. None: never.
    idle_timeout: int | None = attrs.field(default=None, kw_only=True, converter=_idle)
    steps: tuple[BatchStep, ...] = attrs.field(default=(), kw_only=True, converter=_steps)
    window_operator: WindowOperator | None = attrs.field(
        default=None, kw_only=True, validator=optional(check_instance, kind=WindowOperator)
    )
    detectors: tuple[Detector, ...] = attrs.field(default=(), kw_only=True, converter=_detectors)
    routes: tuple[Route, ...] = attrs.field(default=(), kw_only=True, converter=_routes)
    late_routes: tuple[Route, ...] = attrs.field(default=(), kw_only=True, converter=_routes)

    # --- steps ---------------------------------------------------------------------------

    def step(self, step: BatchStep) -> Pipeline:
        """Append any batch step (``name`` and ``process(batch, partition)``)."""
        return attrs.evolve(self, steps=(*self.steps, _check_step(step)))

    def filter(
        self, predicate: Callable[[Any], object], *, per: str = "reading", name: str = "filter"
    ) -> Pipeline:
        """Keep the readings (or, ``per="batch"``, the batches) ``predicate`` accepts."""
        return self.step(Filter(predicate, per=per, name=name))

    def map(
        self, function: Callable[[Any], Any], *, per: str = "reading", name: str = "map"
    ) -> Pipeline:
        """Replace each reading (or batch) by ``function``'s result."""
        return self.step(Map(function, per=per, name=name))

    def flat_map(
        self,
        function: Callable[[Any], Iterable[Any]],
        *,
        per: str = "reading",
        name: str = "flat_map",
    ) -> Pipeline:
        """Replace each reading (or batch) by any number of them."""
        return self.step(FlatMap(function, per=per, name=name))

    def dedup(
        self,
        max_runs: int = 1024,
        *,
        max_devices: int | None = None,
        forgotten: str = "pass",
        name: str = "dedup",
    ) -> Pipeline:
        """Drop readings whose ``(device_id, seq)`` passed before (:class:`Dedup`)."""
        dedup = Dedup(max_runs, max_devices=max_devices, forgotten=forgotten, name=name)
        return self.step(dedup)

    # --- windows and detectors -------------------------------------------------------------

    def window(
        self,
        window: Tumbling | Hopping | Session | WindowOperator,
        *aggregations: Aggregation,
        key_by: str = "device_metric",
        grace: Duration = 0,
        idle_timeout: Duration | None = None,
        emit_updates: bool = False,
        name: str = "window",
    ) -> Pipeline:
        """Aggregate on event-time windows: a window kind with its aggregations and options
        (see :class:`WindowOperator`; ``idle_timeout`` defaults to the pipeline's), or a
        ready :class:`WindowOperator`. One window per pipeline: the aggregates of two would
        share their sink keys ``(device_id, metric, window_start)``."""
        if self.window_operator is not None:
            raise InvalidInputError(
                "a pipeline has one window: run a second pipeline (its own consumer group and "
                "sinks) for windows of another size"
            )
        if isinstance(window, WindowOperator):
            if aggregations:
                raise InvalidInputError("give the aggregations to the WindowOperator itself")
            operator = window
        else:
            operator = WindowOperator(
                window,
                aggregations,
                key_by=key_by,
                grace=grace,
                idle_timeout=self.idle_timeout if idle_timeout is None else idle_timeout,
                emit_updates=emit_updates,
                name=name,
            )
        return attrs.evolve(self, window_operator=operator)

    def detect(self, *detectors: Detector) -> Pipeline:
        """Run detectors on every batch after the steps; their alerts go to the sinks."""
        for detector in detectors:
            if not isinstance(detector, Detector):
                raise InvalidInputError(f"not a detector: {detector!r}")
        names = [d.name for d in (*self.detectors, *detectors)]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"detectors need distinct names: {names}")
        return attrs.evolve(self, detectors=(*self.detectors, *detectors))

    # --- routes --------------------------------------------------------------------------

    def to(
        self,
        sink: Any,
        *,
        kinds: Iterable[str] | None = None,
        bad_rows: BadRows = "dead-letter",
        dead_letters: Any = None,
    ) -> Pipeline:
        """Send records to ``sink``: a sink configuration (opened when the pipeline runs and
        closed after it) or an open writer (left open). ``kinds`` picks among ``"readings"``,
        ``"aggregates"`` and ``"alerts"``; by default, every kind the writer stores.

        ``bad_rows`` (``"dead-letter"``, ``"skip"`` or ``"stop"``) and ``dead_letters`` (a
        sink or writer) say what happens to the records the sink refuses (see :class:`Route`
        and docs/stream.md)."""
        route = Route(_check_sink(sink), kinds, bad_rows=bad_rows, dead_letters=dead_letters)
        return attrs.evolve(self, routes=(*self.routes, route))

    def late_to(
        self, sink: Any, *, bad_rows: BadRows = "dead-letter", dead_letters: Any = None
    ) -> Pipeline:
        """Send the readings the window found late (behind its watermark) to ``sink``, as
        readings. They are counted either way (``statistics()`` of the processor).
        ``bad_rows`` and ``dead_letters`` as for :meth:`to`."""
        route = Route(
            _check_sink(sink), ("readings",), bad_rows=bad_rows, dead_letters=dead_letters
        )
        return attrs.evolve(self, late_routes=(*self.late_routes, route))

    # --- running -------------------------------------------------------------------------

    def processor(self) -> PipelineProcessor:
        """A fresh processor: its own copies of the operators, no state."""
        return PipelineProcessor(self)

    async def run(
        self,
        source: Source,
        *,
        checkpoints: CheckpointStore | None = None,
        checkpoint_interval: float = 5.0,
        until: Callable[[WorkerStats], bool] | None = None,
        flush_at_end: bool = False,
        max_records: int = 500,
    ) -> WorkerStats:
        """Open the sinks, run a :class:`~iotdata.stream.Worker` until it is stopped (or
        ``until(stats)`` is true), checkpoint, close what was opened here; the final stats.

        ``checkpoints`` default to the source's own store (a compacted topic for Kafka, the
        embedded log's folder or memory). ``checkpoint_interval`` is in seconds (>= 0).
        ``flush_at_end`` closes every open window before the last checkpoint: for a bounded
        input. ``max_records`` bounds a poll (an int >= 1). Settings that make no sense raise
        :class:`~iotdata.errors.InvalidInputError` before anything is opened.

        Cancelling the task stops the worker where it is, without a checkpoint (as a kill
        would: the next run resumes at the last one), and closes the source and the sinks
        opened here.
        """
        from iotdata.stream._runtime import run_pipeline  # noqa: PLC0415

        return await run_pipeline(
            self,
            source,
            checkpoints=checkpoints,
            checkpoint_interval=checkpoint_interval,
            until=until,
            flush_at_end=flush_at_end,
            max_records=max_records,
        )


class PipelineProcessor:
    """A pipeline's operators with their state, per source partition: the pure core.

    ``process(batch, partition)`` and ``tick(partition, now)`` return :class:`Emitted`;
    ``snapshot(partition)`` / ``restore(partition, data)`` / ``forget(partition)`` move a
    partition's state; ``flush(partition)`` closes its windows (end of input). An operator that
    raises is named in the :class:`StreamOperatorError`.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        check_instance("pipeline", pipeline, Pipeline)
        steps, window, detectors = copy.deepcopy(
            (pipeline.steps, pipeline.window_operator, pipeline.detectors)
        )
        self.name = pipeline.name
        self._chain = Chain(*steps, name="steps")
        self._has_steps = bool(steps)
        self._window: WindowOperator | None = window
        self._detectors: tuple[Detector, ...] = detectors
        self._idle = pipeline.idle_timeout
        # the event clock of detectors lags the newest ts by the window's grace: readings of
        # other devices up to that far behind are in order, not a silence
        self._lag = window.grace if window is not None else 0
        # partition: [newest ts, newest ts at the last tick, wall time of that tick]
        self._clocks: dict[int, list[int | None]] = {}

    # --- data ----------------------------------------------------------------------------

    def process(self, batch: Batch, partition: int = 0) -> Emitted:
        """Everything one batch of ``partition`` causes."""
        check_batch(batch)
        check_partition(partition)
        batches = self._chain.process(batch, partition) if self._has_steps else [batch]
        if not batches:
            return NOTHING
        window = self._window
        if len(batches) == 1 and window is not None and not self._detectors:  # the common case
            out = window.process(batches[0], partition)
            found = out.results + out.updates if out.updates else out.results
            return Emitted((batches[0],), found, (), out.late)
        aggregates: list[WindowAggregate] = []
        alerts: list[Alert] = []
        late: list[Batch] = []
        newest = None
        for item in batches:
            if window is not None:
                out = window.process(item, partition)
                if out.results:
                    aggregates.extend(out.results)
                if out.updates:
                    aggregates.extend(out.updates)
                if out.late:
                    late.extend(out.late)
            if not self._detectors:
                continue
            for detector in self._detectors:
                alerts.extend(self._call(detector, "process", partition, item, partition))
            top = max([max(column.ts) for column in item.columns if column.ts], default=None)
            if top is not None and (newest is None or top > newest):
                newest = top
        if newest is not None and self._detectors:
            clock = self._clock(partition)
            if clock[0] is None or newest > clock[0]:
                clock[0] = newest
            now = clock[0] - self._lag  # type: ignore[operator]
            alerts.extend(self._advance_detectors(partition, now))
        return Emitted(tuple(batches), tuple(aggregates), tuple(alerts), tuple(late))

    def tick(self, partition: int, now: int) -> Emitted:
        """Time-driven outputs of ``partition`` at wall-clock ``now`` (microseconds): windows
        closed by idle advance, and detector alerts on the event clock."""
        check_partition(partition)
        check_now(now)
        aggregates: tuple[WindowAggregate, ...] = ()
        if self._window is not None:
            aggregates = self._window.advance(partition, now).results
        alerts: list[Alert] = []
        clock = self._clocks.get(partition)
        if clock is not None and clock[0] is not None and self._idle is not None:
            newest, seen, since = clock
            if newest != seen or since is None:
                clock[1], clock[2] = newest, now
            elif now - since >= self._idle:
                alerts = self._advance_detectors(partition, clock[0] + now - since - self._lag)
        if not aggregates and not alerts:
            return NOTHING
        return Emitted(aggregates=aggregates, alerts=tuple(alerts))

    def flush(self, partition: int) -> Emitted:
        """Close every open window of ``partition`` (the end of a bounded input)."""
        check_partition(partition)
        if self._window is None:
            return NOTHING
        results = self._window.flush([partition]).results
        return Emitted(aggregates=results) if results else NOTHING

    # --- state ---------------------------------------------------------------------------

    def snapshot(self, partition: int) -> bytes:
        """The state of ``partition``: every operator's snapshot and the event clock."""
        only = [check_partition(partition)]
        window = None if self._window is None else self._window.snapshot(only)
        body = [
            _STATE_FORMAT,
            _STATE_VERSION,
            self._chain.snapshot(only),
            window,
            [[d.name, d.snapshot(only)] for d in self._detectors],
            self._clocks.get(partition),
        ]
        data: bytes = msgpack.packb(body, use_bin_type=True)
        return data

    def restore(self, partition: int, data: bytes | None) -> None:
        """Take ``partition`` over from a snapshot (None: start it fresh). The pipeline must
        have the same operators as the one that made it (:class:`SnapshotError` otherwise)."""
        self.forget(partition)
        if data is None:
            return
        try:
            fmt, version, chain, window, detectors, clock = msgpack.unpackb(data, raw=False)
        except Exception as exc:  # msgpack raises several unrelated types for bad bytes
            raise SnapshotError(f"not a pipeline snapshot: {exc}") from exc
        if fmt != _STATE_FORMAT or version != _STATE_VERSION:
            raise SnapshotError(f"not a version {_STATE_VERSION} pipeline snapshot")
        names = [d.name for d in self._detectors]
        if (window is None) != (self._window is None) or [n for n, _ in detectors] != names:
            raise SnapshotError("the snapshot was made by a pipeline with other operators")
        self._chain.restore(chain)
        if self._window is not None:
            self._window.restore(window)
        for detector, (_, state) in zip(self._detectors, detectors, strict=True):
            detector.restore(state)
        if clock is not None:
            if type(clock) is not list or len(clock) != 3:
                raise SnapshotError(f"malformed event clock in the snapshot: {clock!r:.60}")
            self._clocks[partition] = clock

    def forget(self, partition: int) -> None:
        """Drop the state of ``partition`` (revoked in a rebalance)."""
        only = [check_partition(partition)]
        self._chain.forget(only)
        if self._window is not None:
            self._window.forget(only)
        for detector in self._detectors:
            detector.forget(only)
        self._clocks.pop(partition, None)

    def statistics(self) -> dict[str, int]:
        """Every operator's counters: ``steps.{i}.{name}.{counter}``, ``{window}.{counter}``
        (``window.late`` counts late readings) and ``{detector}.{counter}``."""
        counters = {f"steps.{key}": count for key, count in self._chain.statistics().items()}
        if self._window is not None:
            name = self._window.name
            counters.update((f"{name}.{k}", v) for k, v in self._window.statistics().items())
        for detector in self._detectors:
            counters.update((f"{detector.name}.{k}", v) for k, v in detector.statistics().items())
        return counters

    # --- internals -----------------------------------------------------------------------

    def _clock(self, partition: int) -> list[int | None]:
        clock = self._clocks.get(partition)
        if clock is None:
            clock = self._clocks[partition] = [None, None, None]
        return clock

    def _advance_detectors(self, partition: int, now: int) -> list[Alert]:
        alerts: list[Alert] = []
        for detector in self._detectors:
            alerts.extend(self._call(detector, "advance", partition, partition, now))
        return alerts

    @staticmethod
    def _call(detector: Detector, method: str, partition: int, *args: Any) -> Sequence[Alert]:
        """``detector.method(*args)``, its failure named after the detector."""
        try:
            found: Sequence[Alert] = getattr(detector, method)(*args)
        except StreamOperatorError:
            raise
        except Exception as exc:
            raise StreamOperatorError(
                detector.name, f"{method} (partition {partition}): {type(exc).__name__}: {exc}"
            ) from exc
        return found
