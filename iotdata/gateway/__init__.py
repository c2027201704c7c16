"""The cloud gateway: device telemetry from MQTT into Kafka without loss.

:class:`Gateway` runs the bridge (``iotdata gateway`` on the command line); :class:`Router` and
:class:`OrderedAcks` are its protocol logic, without I/O.
"""

from iotdata.gateway._gateway import Gateway, GatewaySettings, GatewayStats, prometheus_text
from iotdata.gateway._routing import (
    CONTENT_TYPE,
    REASONS,
    KafkaTopics,
    OrderedAcks,
    Route,
    Router,
)

__all__ = [
    "CONTENT_TYPE",
    "REASONS",
    "Gateway",
    "GatewaySettings",
    "GatewayStats",
    "KafkaTopics",
    "OrderedAcks",
    "Route",
    "Router",
    "prometheus_text",
]
