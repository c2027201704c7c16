"""MQTT plumbing shared by the device client and the gateway.

:class:`Topics` is the topic scheme (pure functions), :class:`MqttSettings` says where and how
to connect (``MqttSettings.from_url("mqtts://user:pw@host")``), and :class:`MqttConnection`
keeps a paho-mqtt 2 connection up with a full-jitter reconnect loop. :class:`LocalBroker` is
the in-process stand-in with the same connection interface, for the embedded default.
"""

from iotdata.mqtt._connection import (
    ConnectionStats,
    Delivery,
    MqttConnection,
    Will,
    default_backoff,
)
from iotdata.mqtt._local import LocalBroker, LocalConnection, LocalMessage
from iotdata.mqtt._settings import MqttSettings, TlsSettings
from iotdata.mqtt._topics import Topics

__all__ = [
    "ConnectionStats",
    "Delivery",
    "LocalBroker",
    "LocalConnection",
    "LocalMessage",
    "MqttConnection",
    "MqttSettings",
    "TlsSettings",
    "Topics",
    "Will",
    "default_backoff",
]
