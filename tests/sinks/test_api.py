"""The public surface of iotdata.sinks and iotdata.testing, and the lazy drivers."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import pytest

import iotdata
from iotdata import sinks


@pytest.mark.parametrize("name", ["iotdata.sinks", "iotdata.testing"])
def test_all_names_exist_and_public_definitions_are_exported(name: str) -> None:
    module = importlib.import_module(name)
    assert len(set(module.__all__)) == len(module.__all__)
    for attribute in module.__all__:
        assert hasattr(module, attribute), f"{name}.__all__ names missing {attribute}"
    for attribute, value in vars(module).items():
        if attribute.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if getattr(value, "__module__", None) == name and callable(value):
            assert attribute in module.__all__, f"{name}.{attribute} is not exported"


def test_sink_errors_share_the_root_and_say_whose_fault() -> None:
    assert issubclass(sinks.SinkError, iotdata.IotDataError)
    assert issubclass(sinks.BadRowError, iotdata.InvalidInputError)
    assert issubclass(sinks.SinkClosedError, iotdata.ClosedError)
    assert issubclass(sinks.MissingDependencyError, ImportError)
    assert sinks.SinkRetriableError.retriable and sinks.SinkBackpressureError.retriable
    assert not sinks.SinkFatalError.retriable and not sinks.BadRowError.retriable
    assert sinks.SinkBackpressureError("busy", retry_after=2.5).retry_after == 2.5


def test_importing_the_sinks_loads_no_driver() -> None:
    drivers = "('psycopg', 'pyarrow', 'aiokafka', 'paho')"
    code = (
        "import sys, iotdata.sinks, iotdata.testing; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {drivers}))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"
