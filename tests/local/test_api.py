"""The public surface of iotdata.local: __all__ is honest, and the layers stay in order."""

from __future__ import annotations

import subprocess
import sys
import types

import iotdata.local
from iotdata.errors import InvalidInputError, IotDataError
from iotdata.local import (
    CommitFailedError,
    LogStorageError,
    OffsetOutOfRangeError,
    UnknownMemberError,
    UnknownTopicError,
)


def test_all_names_exist_are_unique_and_cover_the_public_definitions() -> None:
    exported = iotdata.local.__all__
    assert len(set(exported)) == len(exported)
    assert exported == sorted(exported)
    for name in exported:
        assert hasattr(iotdata.local, name), name
    for name, value in vars(iotdata.local).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if callable(value) and getattr(value, "__module__", "").startswith("iotdata.local"):
            assert name in exported, f"iotdata.local.{name} is public but not exported"


def test_errors_share_the_root_and_say_whose_fault() -> None:
    for error in (CommitFailedError, LogStorageError, OffsetOutOfRangeError, UnknownTopicError):
        assert issubclass(error, IotDataError)
    assert issubclass(UnknownTopicError, InvalidInputError)
    assert issubclass(UnknownMemberError, CommitFailedError)


def test_importing_the_log_loads_neither_aiokafka_nor_higher_layers() -> None:
    code = (
        "import sys, iotdata.local\n"
        "heavy = ['aiokafka', 'paho', 'iotdata.gateway', 'iotdata.stream', 'iotdata.cli']\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert out == ""
