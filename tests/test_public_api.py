"""The public surface: every exported name exists, and nothing public goes unexported."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import pytest

import iotdata

PUBLIC_MODULES = [
    "iotdata",
    "iotdata.codec",
    "iotdata.device",
    "iotdata.errors",
    "iotdata.gateway",
    "iotdata.kafka",
    "iotdata.local",
    "iotdata.model",
    "iotdata.mqtt",
    "iotdata.sinks",
    "iotdata.stream",
    "iotdata.testing",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_names_exist_and_are_unique(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(set(exported)) == len(exported)
    for attribute in exported:
        assert hasattr(module, attribute), f"{name}.__all__ names missing {attribute}"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_definitions_are_exported(name: str) -> None:
    """Classes and functions defined in a public module without a leading _ are in __all__."""
    module = importlib.import_module(name)
    for attribute, value in vars(module).items():
        if attribute.startswith("_") or isinstance(value, types.ModuleType):
            continue
        defined_here = getattr(value, "__module__", None) == name
        if defined_here and callable(value):
            assert attribute in module.__all__, f"{name}.{attribute} is public but not exported"


def test_errors_share_one_root() -> None:
    for error in (iotdata.InvalidInputError, iotdata.EncodeError, iotdata.DecodeError):
        assert issubclass(error, iotdata.IotDataError)
    assert iotdata.codec.DecodeError is iotdata.DecodeError


def test_importing_the_device_client_defers_the_transports() -> None:
    """`import iotdata.device` (on every device's start-up path) leaves paho-mqtt, tenacity and
    ssl for the first connection; they load once a client connects."""
    code = (
        "import sys, iotdata.device\n"
        "heavy = ['paho', 'tenacity', 'ssl', 'iotdata.mqtt._connection',"
        " 'iotdata.device._simulator']\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
        "from iotdata.mqtt import MqttConnection\n"
        "print('paho' in sys.modules and 'tenacity' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    assert out[0] == ""
    assert out[1] == "True"
