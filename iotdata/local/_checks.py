"""Argument checks of the embedded log: bad input raises InvalidInputError, naming it."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import attrs

from iotdata._checks import check_iterable
from iotdata.errors import InvalidInputError
from iotdata.local._records import Retention

__all__ = [
    "check_count",
    "check_name",
    "check_retention",
    "check_timeout",
    "is_int",
    "positive",
    "session_timeout",
    "topic_set",
]


def _listed(name: str, value: object) -> list[Any]:
    return check_iterable(name, value, what="a topic name or a collection of them")


def is_int(value: object) -> bool:
    return type(value) is int


def _is_number(value: object) -> bool:
    return type(value) in (int, float)


def check_count(name: str, value: object, minimum: int) -> None:
    if type(value) is not int or value < minimum:
        raise InvalidInputError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_name(what: str, value: object) -> str:
    if type(value) is not str or not value:
        raise InvalidInputError(f"{what} must be a non-empty str, got {value!r}")
    return value


def check_timeout(timeout: object) -> None:
    if timeout is not None and not (_is_number(timeout) and timeout >= 0):  # type: ignore[operator]
        raise InvalidInputError(f"timeout must be None or a number >= 0, got {timeout!r}")


def check_retention(value: object) -> Retention:
    if not isinstance(value, Retention):
        raise InvalidInputError(f"retention must be a Retention, got {value!r}")
    return value


def topic_set(topics: str | Collection[str]) -> frozenset[str]:
    """Topics to subscribe to: one name, or a non-empty collection of names."""
    listed = [topics] if isinstance(topics, str) else _listed("topics", topics)
    if not listed:
        raise InvalidInputError("a member must subscribe to at least one topic")
    for name in listed:
        check_name("a topic", name)
    return frozenset(listed)


# attrs validators


def session_timeout(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not (_is_number(value) and value > 0):  # type: ignore[operator]
        raise InvalidInputError(f"session_timeout must be None or > 0, got {value!r}")


def positive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_count(attribute.name, value, 1)


def retention(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_retention(value)
