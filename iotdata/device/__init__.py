"""The device side: what runs on a Raspberry Pi or an edge gateway.

Edge operators (:class:`Deadband`, :class:`Downsample`, :class:`RateLimit`, :class:`Filter`,
:class:`Map`, chained with :class:`Pipeline`) shape readings before they are queued. The
durable queue (:class:`ReadingQueue`) keeps accepted readings until the broker acknowledged
them, and :class:`DeviceClient` ties it together: ``send``, batching, the MQTT connection,
commands and configuration. :class:`FleetSimulator` (``iotdata simulate``) drives thousands of
virtual devices over a few shared connections.
"""

from typing import TYPE_CHECKING, Any

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
    "ANOMALY_KINDS",
    "DEFAULT_ANOMALY_RATE",
    "Anomaly",
    "Deadband",
    "DeviceClient",
    "DeviceStats",
    "Downsample",
    "EdgeOperator",
    "EdgeOperatorError",
    "EdgeReading",
    "Filter",
    "FleetSimulator",
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
    "ReplaySignal",
    "SimulationSummary",
    "SyntheticSignal",
    "load_anomalies",
    "read_series",
    "save_anomalies",
]

# The fleet simulator runs in the cloud or on a workstation, not on devices: it is loaded on
# first use so that `import iotdata.device` stays light.
_SIMULATOR = frozenset(
    {
        "ANOMALY_KINDS",
        "DEFAULT_ANOMALY_RATE",
        "Anomaly",
        "FleetSimulator",
        "ReplaySignal",
        "SimulationSummary",
        "SyntheticSignal",
        "load_anomalies",
        "read_series",
        "save_anomalies",
    }
)

if TYPE_CHECKING:
    from iotdata.device._simulator import (
        ANOMALY_KINDS,
        DEFAULT_ANOMALY_RATE,
        Anomaly,
        FleetSimulator,
        ReplaySignal,
        SimulationSummary,
        SyntheticSignal,
        load_anomalies,
        read_series,
        save_anomalies,
    )


def __getattr__(name: str) -> Any:
    if name in _SIMULATOR:
        from iotdata.device import _simulator  # noqa: PLC0415

        return getattr(_simulator, name)
    raise AttributeError(f"module 'iotdata.device' has no attribute {name!r}")
