"""MQTT plumbing shared by the device client and the gateway.

:class:`Topics` is the topic scheme (pure functions), :class:`MqttSettings` says where and how
to connect (``MqttSettings.from_url("mqtts://user:pw@host")``), and :class:`MqttConnection`
keeps a paho-mqtt 2 connection up with a full-jitter reconnect loop. :class:`LocalBroker` is
the in-process stand-in with the same connection interface, for the embedded default.

The connection classes load on first use, and with them paho-mqtt and tenacity: a program
that imports the device client pays for them only once it connects.
"""

from typing import TYPE_CHECKING, Any

from iotdata.mqtt._delivery import (
    ConnectionStats,
    Delivery,
    Will,
    backoff_delay,
    default_backoff,
    refusal_backoff,
)
from iotdata.mqtt._settings import MqttSettings, TlsSettings
from iotdata.mqtt._topics import Topics

__all__ = [
    "ConnectionStats",
    "Delivery",
    "LocalBroker",
    "LocalBrokerStats",
    "LocalConnection",
    "LocalMessage",
    "MqttConnection",
    "MqttSettings",
    "TlsSettings",
    "Topics",
    "Will",
    "backoff_delay",
    "default_backoff",
    "refusal_backoff",
]

if TYPE_CHECKING:
    from iotdata.mqtt._connection import MqttConnection
    from iotdata.mqtt._local import LocalBroker, LocalBrokerStats, LocalConnection, LocalMessage

_LAZY = {
    "MqttConnection": "_connection",
    "LocalBroker": "_local",
    "LocalBrokerStats": "_local",
    "LocalConnection": "_local",
    "LocalMessage": "_local",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'iotdata.mqtt' has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    return getattr(importlib.import_module(f"iotdata.mqtt.{module}"), name)
