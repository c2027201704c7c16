"""The embedded default: an in-process partitioned log standing in for Kafka.

:class:`LocalLog` holds topics of N partitions, keyed with Kafka's Java-compatible murmur2
(:func:`iotdata.kafka.partition_for`), bounded by :class:`Retention`, with consumer groups
(range assignor, generations, committed offsets) and, with :meth:`LocalLog.open`, kept in a
folder so a run can be resumed. :class:`LocalProducer` has the interface of
:class:`iotdata.kafka.PartitionedProducer` and :class:`LocalConsumer` the shape of aiokafka's
consumer, so a pipeline runs unchanged against the embedded log or a Kafka cluster.
"""

from iotdata.local._consumer import ConsumerStats, LocalConsumer, OffsetReset, RebalanceListener
from iotdata.local._errors import (
    CommitFailedError,
    LogStorageError,
    OffsetOutOfRangeError,
    UnknownMemberError,
    UnknownTopicError,
)
from iotdata.local._groups import range_assign
from iotdata.local._log import LocalLog
from iotdata.local._producer import LocalProducer
from iotdata.local._records import GroupAssignment, LogRecord, LogStats, Retention, TopicPartition
from iotdata.local._storage import Durability

__all__ = [
    "CommitFailedError",
    "ConsumerStats",
    "Durability",
    "GroupAssignment",
    "LocalConsumer",
    "LocalLog",
    "LocalProducer",
    "LogRecord",
    "LogStats",
    "LogStorageError",
    "OffsetOutOfRangeError",
    "OffsetReset",
    "RebalanceListener",
    "Retention",
    "TopicPartition",
    "UnknownMemberError",
    "UnknownTopicError",
    "range_assign",
]
