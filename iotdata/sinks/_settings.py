"""Checks of the sinks' settings, shared by their configuration classes (attrs validators).

Every setting is checked when the configuration is made, so that a bad value is an
:class:`~iotdata.InvalidInputError` naming it, never a failure at open or at the first flush.
"""

from __future__ import annotations

from typing import Any

import attrs

from iotdata._checks import (
    check_bool,
    check_instance,
    check_int,
    check_seconds,
    check_text,
    refuse,
)
from iotdata.sinks._retry import RetryPolicy

__all__ = ["flag", "flush_rows", "retry", "seconds", "stream", "text"]


def flush_rows(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_int(attribute.name, value, minimum=1)


def retry(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_instance(attribute.name, value, RetryPolicy)


def flag(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_bool(attribute.name, value)


def seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A finite number of seconds > 0 (a timeout)."""
    check_seconds(attribute.name, value, zero=False)


def text(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """None, or a non-empty str."""
    if value is not None:
        check_text(attribute.name, value)


def stream(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """None, or a text stream (something with ``write``)."""
    if value is not None and not callable(getattr(value, "write", None)):
        refuse(attribute.name, "a text stream (with write()) or None", value)
