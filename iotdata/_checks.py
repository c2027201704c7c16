"""Argument checks at the public entry points: one place that says what a count, a number of
seconds, a path or a callback must be, so that every entry point refuses bad input the same
way: with :class:`~iotdata.errors.InvalidInputError` naming the parameter.

Each ``check_*`` function returns the value (normalised where it says so) or raises;
:func:`validated` and :func:`optional` make one an attrs validator named after the attribute.
They run when a value enters (a constructor, a call), never per reading on a hot path.
"""

from __future__ import annotations

import math
import os
import reprlib
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn, TypeVar

import attrs

from iotdata.errors import InvalidInputError

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "check_bool",
    "check_callable",
    "check_headers",
    "check_instance",
    "check_int",
    "check_iterable",
    "check_mapping",
    "check_number",
    "check_path",
    "check_seconds",
    "check_sqlite_path",
    "check_text",
    "check_timeout",
    "each",
    "optional",
    "record_key",
    "refuse",
    "shown",
    "validated",
]

T = TypeVar("T")
#: The widest signed 64-bit range (seq numbers, offsets, timestamps in microseconds).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def shown(value: object) -> str:
    """A short repr of a value for an error message (a 100k-character string is cut)."""
    try:
        return _REPR.repr(value)
    except Exception:  # a repr that raises must not hide the error being reported
        return f"<{type(value).__name__}>"


def refuse(name: str, expected: str, value: object) -> NoReturn:
    raise InvalidInputError(f"{name} must be {expected}, got {shown(value)}")


def check_int(
    name: str, value: object, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """An int (not a bool, not a float) in ``[minimum, maximum]``."""
    if (
        type(value) is not int
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        refuse(name, _int_range(minimum, maximum), value)
    return value


def _int_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an int from {minimum} to {maximum}"
    if minimum is not None:
        return f"an int >= {minimum}"
    return "an int" if maximum is None else f"an int <= {maximum}"


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    finite: bool = True,
) -> float:
    """An int or float (not a bool, not NaN), finite unless ``finite=False``, ``>= minimum``,
    ``> above`` and ``<= maximum``; returned as a float."""
    ok = type(value) in (int, float) and not (type(value) is float and math.isnan(value))
    number = math.nan
    if ok:
        number = float(value)  # type: ignore[arg-type]
        ok = (
            (not finite or math.isfinite(number))
            and (minimum is None or number >= minimum)
            and (above is None or number > above)
            and (maximum is None or number <= maximum)
        )
    if not ok:
        refuse(name, _number_range(minimum, above, maximum, finite), value)
    return number


def _number_range(
    minimum: float | None, above: float | None, maximum: float | None, finite: bool
) -> str:
    parts = [f">= {minimum:g}"] if minimum is not None else []
    parts += [f"> {above:g}"] if above is not None else []
    parts += [f"<= {maximum:g}"] if maximum is not None else []
    kind = "a finite number" if finite else "a number (not NaN)"
    return f"{kind} {' and '.join(parts)}".rstrip()


def check_seconds(name: str, value: object, *, zero: bool = True, infinite: bool = False) -> float:
    """A number of seconds: >= 0 (> 0 when ``zero=False``), finite unless ``infinite``."""
    if zero:
        return check_number(name, value, minimum=0.0, finite=not infinite)
    return check_number(name, value, above=0.0, finite=not infinite)


def check_timeout(name: str, value: object) -> float | None:
    """How long a call may wait: None (for ever) or seconds >= 0. An infinite timeout, or one
    longer than the platform can wait, is returned as None (for ever)."""
    if value is None:
        return None
    seconds = check_number(name, value, minimum=0.0, finite=False)
    return None if seconds >= threading.TIMEOUT_MAX else seconds


def check_bool(name: str, value: object) -> bool:
    if type(value) is not bool:
        refuse(name, "True or False", value)
    return value


def check_text(name: str, value: object, *, empty: bool = False) -> str:
    """A str of valid Unicode (no lone surrogate), non-empty unless ``empty``."""
    if type(value) is not str or (not value and not empty):
        refuse(name, "a str" if empty else "a non-empty str", value)
    try:
        value.encode()
    except UnicodeEncodeError:
        refuse(name, "valid Unicode (no lone surrogates)", value)
    return value


def check_callable(name: str, value: object, *, none: bool = False) -> Any:
    if not callable(value) and not (none and value is None):
        refuse(name, "callable" + (" or None" if none else ""), value)
    return value


def check_instance(name: str, value: object, kind: type[T], *, none: bool = False) -> T:
    if not isinstance(value, kind) and not (none and value is None):
        refuse(name, f"a {kind.__name__}" + (" or None" if none else ""), value)
    return value  # type: ignore[return-value]


def check_iterable(name: str, value: object, *, what: str = "an iterable") -> list[Any]:
    """The items of an iterable that is no str, bytes or mapping, as a list."""
    if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
        refuse(name, what, value)
    try:
        return list(value)
    except InvalidInputError:
        raise
    except Exception as exc:  # a generator that raises while it is read
        raise InvalidInputError(f"{name}: reading the iterable failed: {exc!r}") from exc


def check_mapping(name: str, value: object) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        refuse(name, "a mapping", value)
    return value


def check_path(name: str, value: object) -> str:
    """A file or folder path: a non-empty str or ``os.PathLike`` of str, valid Unicode, no NUL
    (an empty path would silently mean a temporary file or the current folder)."""
    if not isinstance(value, (str, os.PathLike)):
        refuse(name, "a path (str or os.PathLike)", value)
    path = os.fspath(value)
    if type(path) is not str or not path:
        refuse(name, "a non-empty path of str", value)
    if "\0" in path:
        refuse(name, "a path without NUL characters", value)
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        refuse(name, "a path the file system can encode", value)
    return path


def record_key(value: object) -> bytes:
    """A record key (Kafka, the embedded log) as bytes: bytes as they are, a str as UTF-8."""
    if type(value) is bytes:
        return value
    if type(value) is not str:
        refuse("key", "str or bytes", value)
    try:
        return value.encode()
    except UnicodeEncodeError:
        refuse("key", "valid Unicode (no lone surrogates)", value)


def check_headers(headers: object) -> tuple[tuple[str, bytes], ...]:
    """Record headers as a tuple of ``(str, bytes)`` pairs."""
    if type(headers) is tuple and all(_plain_header(pair) for pair in headers):
        return headers  # the common case, per record: no copy
    pairs = []
    for pair in check_iterable("headers", headers, what="a sequence of (str, bytes) pairs"):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            refuse("a header", "a (str, bytes) pair", pair)
        name, data = pair
        if type(data) is not bytes:
            refuse("a header", "a (str, bytes) pair", pair)
        pairs.append((check_text("a header name", name, empty=True), data))
    return tuple(pairs)


def _plain_header(pair: object) -> bool:
    return (
        type(pair) is tuple
        and len(pair) == 2
        and type(pair[0]) is str
        and type(pair[1]) is bytes
        and pair[0].isascii()
    )


def check_sqlite_path(name: str, value: object) -> str:
    """A path for a SQLite file: :func:`check_path`, and not ``":memory:"``, which SQLite would
    take for a database in memory (lost with the connection)."""
    path = check_path(name, value)
    if path == ":memory:":
        refuse(name, "a file path (':memory:' would keep nothing)", value)
    return path


def validated(check: Callable[..., Any], **options: Any) -> Callable[[Any, Any, Any], None]:
    """An attrs validator running ``check(attribute name, value, **options)``."""

    def validate(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        check(attribute.name.lstrip("_"), value, **options)

    return validate


def optional(check: Callable[..., Any], **options: Any) -> Callable[[Any, Any, Any], None]:
    """Like :func:`field`, None allowed."""

    def validate(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            check(attribute.name.lstrip("_"), value, **options)

    return validate


def each(name: str, values: object, check: Callable[..., T], **options: Any) -> list[T]:
    """``check`` applied to every item of an iterable (named ``name[i]``)."""
    return [check(f"{name}[{i}]", v, **options) for i, v in enumerate(check_iterable(name, values))]
