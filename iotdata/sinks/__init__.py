"""Where the pipeline's results land: the sink contract and the built-in sinks.

A sink is a frozen configuration; ``await sink.open()`` (or ``async with sink.open() as w``)
gives a writer with ``write(records, position=...)``, ``flush()`` and ``close()``. Records are
readings (:class:`~iotdata.Batch` objects, or :class:`~iotdata.Reading`),
:class:`WindowAggregate` and :class:`Alert`, each with its key: ``(device_id, seq)``,
``(device_id, metric, window_start)`` (newest revision wins) and ``(device_id, detector, ts)``.

Built in, idempotent on those keys: :class:`SqliteSink` (the embedded default),
:class:`PostgresSink` (warm path, ``[postgres]`` extra) and :class:`ParquetSink` (cold path,
``[parquet]`` extra). At least once, the keys carried for consumers to deduplicate:
:class:`KafkaSink` (derived streams and alerts to topics), :class:`MqttSink` (alerts back to
the devices) and :class:`ConsoleSink`. Write your own on :class:`BufferedWriter` and check it
with :func:`iotdata.testing.check_sink`. The guide is docs/sinks.md.

A record a sink refuses (:class:`BadRowError`) becomes a :class:`DeadLetter` in the stream
runtime; every built-in sink but the MQTT one keeps dead letters next to its data.
"""

from iotdata.sinks._console import ConsoleSink, ConsoleWriter
from iotdata.sinks._errors import (
    BadRowError,
    MissingDependencyError,
    SinkBackpressureError,
    SinkClosedError,
    SinkError,
    SinkFatalError,
    SinkRetriableError,
)
from iotdata.sinks._kafka import KafkaSink, KafkaWriter
from iotdata.sinks._mqtt import MqttSink, MqttWriter
from iotdata.sinks._parquet import ParquetSink, ParquetWriter
from iotdata.sinks._postgres import PostgresSink, PostgresWriter
from iotdata.sinks._records import (
    ALL_KINDS,
    Alert,
    DeadLetter,
    PendingRecords,
    ReadingColumn,
    RecordKind,
    SourcePosition,
    ValueKind,
    WindowAggregate,
)
from iotdata.sinks._retry import RetryPolicy
from iotdata.sinks._sqlite import SqliteSink, SqliteWriter
from iotdata.sinks._validate import RowLimits
from iotdata.sinks._writer import (
    BufferedWriter,
    Opening,
    Record,
    Records,
    Sink,
    SinkStats,
    SinkWriter,
)

__all__ = [
    "ALL_KINDS",
    "Alert",
    "BadRowError",
    "BufferedWriter",
    "ConsoleSink",
    "ConsoleWriter",
    "DeadLetter",
    "KafkaSink",
    "KafkaWriter",
    "MissingDependencyError",
    "MqttSink",
    "MqttWriter",
    "Opening",
    "ParquetSink",
    "ParquetWriter",
    "PendingRecords",
    "PostgresSink",
    "PostgresWriter",
    "ReadingColumn",
    "Record",
    "RecordKind",
    "Records",
    "RetryPolicy",
    "RowLimits",
    "Sink",
    "SinkBackpressureError",
    "SinkClosedError",
    "SinkError",
    "SinkFatalError",
    "SinkRetriableError",
    "SinkStats",
    "SinkWriter",
    "SourcePosition",
    "SqliteSink",
    "SqliteWriter",
    "ValueKind",
    "WindowAggregate",
]
