"""iotdata: IoT telemetry pipelines in Python.

Durable device clients, a compact wire format, partitioned Kafka ingestion, event-time stream
operators and idempotent storage sinks. Subpackages: :mod:`iotdata.codec` (wire format),
:mod:`iotdata.model` (readings and batches), :mod:`iotdata.device` (the device client),
:mod:`iotdata.kafka` and :mod:`iotdata.gateway` (ingestion), :mod:`iotdata.sinks` (storage).
"""

from iotdata.errors import (
    AuthenticationError,
    ClosedError,
    ConnectError,
    ConnectionLostError,
    DecodeError,
    EncodeError,
    InvalidInputError,
    IotDataError,
)
from iotdata.model import Batch, Column, Reading, Value

__version__ = "0.1.0.dev0"

__all__ = [
    "AuthenticationError",
    "Batch",
    "ClosedError",
    "Column",
    "ConnectError",
    "ConnectionLostError",
    "DecodeError",
    "EncodeError",
    "InvalidInputError",
    "IotDataError",
    "Reading",
    "Value",
    "__version__",
]
