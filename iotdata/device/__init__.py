"""The device side: what runs on a Raspberry Pi or an edge gateway.

Edge operators (:class:`Deadband`, :class:`Downsample`, :class:`RateLimit`, :class:`Filter`,
:class:`Map`, chained with :class:`Pipeline`) shape readings before they are queued. The
durable queue and the ``DeviceClient`` build on them (work in progress, issue 3).
"""

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
from iotdata.errors import EdgeOperatorError

__all__ = [
    "AGGREGATIONS",
    "Deadband",
    "Downsample",
    "EdgeOperator",
    "EdgeOperatorError",
    "EdgeReading",
    "Filter",
    "Map",
    "Pipeline",
    "RateLimit",
]
