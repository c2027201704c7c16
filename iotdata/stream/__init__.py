"""Stream operators and their runtime: event-time windows, aggregations, dedup and detectors
over batches, composed into a :class:`Pipeline` and run by a :class:`Worker` over Kafka, the
embedded log or MQTT, with exact recovery.

The operator core is pure: values in, values out; no I/O, threads or clocks (time comes from the
readings' ``ts`` and from the ``now`` passed to ``advance``). Operators take whole
:class:`~iotdata.Batch` objects and work on their column tuples; per-reading objects are made
only for per-reading user functions. Every stateful operator keeps its state per source
partition and can ``snapshot()`` it to versioned msgpack bytes and ``restore()`` it, so the
runtime checkpoints it with the source offsets and hands partitions over in a rebalance.

* pipelines: :class:`Pipeline` (steps, one window, detectors, sinks), its pure core
  :class:`PipelineProcessor` and what it gives back, :class:`Emitted`;
* windows: :class:`WindowOperator` with :class:`Tumbling`, :class:`Hopping`, :class:`Session`;
  results are :class:`~iotdata.sinks.WindowAggregate` records in a :class:`WindowOutput`;
* aggregations: :class:`Count`, :class:`Sum`, :class:`Min`, :class:`Max`, :class:`Mean`,
  :class:`Variance`, :class:`Stddev`, :class:`First`, :class:`Last`, :class:`Quantiles`,
  :class:`ApproxQuantiles` (:class:`QuantileSketch`), or your own :class:`Aggregation`;
* :class:`Dedup` by ``(device_id, seq)``;
* detectors raising :class:`~iotdata.sinks.Alert`: :class:`Threshold`, :class:`ZScore`,
  :class:`RateOfChange`, :class:`Flatline`, :class:`MissingData`;
* steps: :class:`Filter`, :class:`Map`, :class:`FlatMap`, composed by :class:`Chain`;
* the runtime: :class:`Worker`, the sources :class:`KafkaSource`, :class:`LocalSource`,
  :class:`MqttSource` and the in-process :class:`MemorySource`, checkpoint stores
  :class:`KafkaCheckpoints`, :class:`FileCheckpoints` and :class:`MemoryCheckpoints`.

Durations are integer microseconds or :class:`datetime.timedelta`. The guide is docs/stream.md.
"""

from iotdata.stream._aggregations import (
    AggregateValue,
    Aggregation,
    ApproxQuantiles,
    Count,
    First,
    Last,
    Max,
    Mean,
    Min,
    Quantiles,
    Stddev,
    Sum,
    Variance,
)
from iotdata.stream._checkpoint import (
    Checkpoint,
    CheckpointStore,
    FileCheckpoints,
    KafkaCheckpoints,
    MemoryCheckpoints,
)
from iotdata.stream._common import Duration
from iotdata.stream._dedup import Dedup
from iotdata.stream._detectors import Flatline, MissingData, RateOfChange, Threshold, ZScore
from iotdata.stream._errors import CheckpointTooLargeError, SnapshotError, StreamOperatorError
from iotdata.stream._pipeline import Detector, Emitted, Pipeline, PipelineProcessor, Route
from iotdata.stream._results import WindowOutput
from iotdata.stream._runtime import Processor, Source, SourceRecord, Worker, WorkerStats
from iotdata.stream._sketch import QuantileSketch
from iotdata.stream._sources import KafkaSource, LocalSource, MemorySource, MqttSource
from iotdata.stream._steps import BatchStep, Chain, Filter, FlatMap, Map, Stateful
from iotdata.stream._windowed import WindowOperator
from iotdata.stream._windows import Hopping, Session, Tumbling, Window

__all__ = [
    "AggregateValue",
    "Aggregation",
    "ApproxQuantiles",
    "BatchStep",
    "Chain",
    "Checkpoint",
    "CheckpointStore",
    "CheckpointTooLargeError",
    "Count",
    "Dedup",
    "Detector",
    "Duration",
    "Emitted",
    "FileCheckpoints",
    "Filter",
    "First",
    "FlatMap",
    "Flatline",
    "Hopping",
    "KafkaCheckpoints",
    "KafkaSource",
    "Last",
    "LocalSource",
    "Map",
    "Max",
    "Mean",
    "MemoryCheckpoints",
    "MemorySource",
    "Min",
    "MissingData",
    "MqttSource",
    "Pipeline",
    "PipelineProcessor",
    "Processor",
    "QuantileSketch",
    "Quantiles",
    "RateOfChange",
    "Route",
    "Session",
    "SnapshotError",
    "Source",
    "SourceRecord",
    "Stateful",
    "Stddev",
    "StreamOperatorError",
    "Sum",
    "Threshold",
    "Tumbling",
    "Variance",
    "Window",
    "WindowOperator",
    "WindowOutput",
    "Worker",
    "WorkerStats",
    "ZScore",
]
