"""Kafka plumbing for the gateway and the stream workers.

:func:`murmur2` and :func:`partition_for` are Kafka's Java-compatible key partitioning (pure
functions, no I/O): a record keyed by a device id lands in the partition the Java producer
would pick, so per-device order holds across clients. :class:`Partitioner` adds a bounded cache
of key hashes and can be passed to aiokafka as ``partitioner=``. :class:`PartitionedProducer`
sends encoded batches keyed by device with bounded memory and a delivery deadline, and
:func:`ensure_topics` creates the topics a pipeline needs. :class:`KafkaSecurity` (TLS, mutual
TLS, SASL PLAIN or SCRAM) says how every one of them connects to a secured cluster.
"""

from iotdata._tls import TlsSettings
from iotdata.kafka._admin import TopicSpec, ensure_topics
from iotdata.kafka._partitioner import Partitioner, murmur2, partition_for
from iotdata.kafka._producer import Delivered, PartitionedProducer, ProducerSettings, ProducerStats
from iotdata.kafka._security import SASL_MECHANISMS, KafkaSecurity

__all__ = [
    "SASL_MECHANISMS",
    "Delivered",
    "KafkaSecurity",
    "PartitionedProducer",
    "Partitioner",
    "ProducerSettings",
    "ProducerStats",
    "TlsSettings",
    "TopicSpec",
    "ensure_topics",
    "murmur2",
    "partition_for",
]
