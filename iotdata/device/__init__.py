"""The device side: what runs on a Raspberry Pi or an edge gateway.

Edge operators (:class:`Deadband`, :class:`Downsample`, :class:`RateLimit`, :class:`Filter`,
:class:`Map`, chained with :class:`Pipeline`) shape readings before they are queued. The
durable queue (:class:`ReadingQueue`) keeps accepted readings until the broker acknowledged
them, and :class:`DeviceClient` ties it together: ``send``, batching, the MQTT connection,
commands and configuration.
"""

from iotdata.device._client import DeviceClient, DeviceStats
from iotdata.device._operators import (
    AGGREGATIONS,
    Deadband,
    Downsample,
    EdgeOperator,
    EdgeReading,
    Filter,
    Map,
    Pipeline,
    RateLimit,
)
from iotdata.device._queue import Lease, Overflow, QueueConfig, QueueStats, ReadingQueue
from iotdata.errors import (
    EdgeOperatorError,
    QueueClosedError,
    QueueFullError,
    QueueStorageError,
)

__all__ = [
    "AGGREGATIONS",
    "Deadband",
    "DeviceClient",
    "DeviceStats",
    "Downsample",
    "EdgeOperator",
    "EdgeOperatorError",
    "EdgeReading",
    "Filter",
    "Lease",
    "Map",
    "Overflow",
    "Pipeline",
    "QueueClosedError",
    "QueueConfig",
    "QueueFullError",
    "QueueStats",
    "QueueStorageError",
    "RateLimit",
    "ReadingQueue",
]
