"""The public API boundary: wrong types and values end in an ``IotDataError``, nothing else.

Every public constructor, classmethod, function and main method (tests/_api_surface.py lists
them, with the reasons for the few left out) is called with wrong values drawn by hypothesis
for one or two of its parameters at a time. A call passes when it returns (what it opened is
closed) or raises an :class:`~iotdata.IotDataError` subclass; a builtin or third-party
exception, or a call still running after ``CALL_TIMEOUT``, fails.

No call may reach beyond 127.0.0.1: host and URL parameters get a closed local port (or the
local test services) and are fuzzed only with values that are no host at all, and a guard
refuses (and fails the test on) any name lookup but the loopback's. File-creating calls run
in a temporary working directory.

``IOTDATA_API_CENSUS=FILE`` records every failure as a JSON line in FILE instead of failing,
to count the distinct ones (entry point, exception type, where it was raised).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import socket
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from iotdata.errors import InvalidInputError
from tests._api_surface import EXEMPT, all_entries
from tests._boundary import (
    Entry,
    HangError,
    NetworkGuard,
    Outcome,
    entry,
    in_thread,
    run_entry,
    short,
)

ENTRIES = all_entries()
PUBLIC_MODULES = [
    "iotdata",
    "iotdata.codec",
    "iotdata.demo",
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
CENSUS = os.environ.get("IOTDATA_API_CENSUS")
#: The fixture that checks a service is up, for the entry points marked as needing it.
_SERVICE_FIXTURES = {"mqtt": "mqtt_url", "kafka": "kafka_bootstrap", "postgres": "postgres_dsn"}


@pytest.fixture
def guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    monkeypatch.chdir(tmp_path)
    with NetworkGuard() as network:
        yield network


def _record(entry: Entry, args: dict[str, object], outcome: Outcome) -> None:
    error = outcome.error
    where = "hang"
    if error is not None:
        frames = traceback.extract_tb(error.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    line = {
        "entry": entry.name,
        "params": sorted(args),
        "args": short(args),
        "error": "hang" if outcome.hung else type(error).__name__,
        "message": "" if error is None else str(error)[:200],
        "where": where,
    }
    with open(CENSUS, "a", encoding="utf-8") as out:  # type: ignore[arg-type]
        out.write(json.dumps(line) + "\n")


def _check(entry: Entry, args: dict[str, object], guard: NetworkGuard) -> None:
    outcome = run_entry(entry, args)
    if guard.attempts:
        looked_up, guard.attempts[:] = list(guard.attempts), []
        pytest.fail(f"{entry.name}({short(args)}) looked up {looked_up}: beyond 127.0.0.1")
    if outcome.acceptable:
        return
    if CENSUS:
        _record(entry, args, outcome)
        return
    if outcome.hung:
        pytest.fail(f"{entry.name}({short(args)}) did not return within the call timeout")
    error = outcome.error
    raise AssertionError(
        f"{entry.name}({short(args)}) raised {type(error).__name__}: {short(str(error))}, "
        "not an IotDataError"
    ) from error


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.name, marks=e.marks) for e in ENTRIES])
def test_wrong_values_end_in_iotdata_errors(
    entry: Entry, guard: NetworkGuard, request: pytest.FixtureRequest
) -> None:
    for mark in entry.marks:
        request.getfixturevalue(_SERVICE_FIXTURES[mark.name])

    @settings(
        max_examples=entry.examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        report_multiple_bugs=False,
    )
    @given(args=entry.strategy())
    def calls(args: dict[str, object]) -> None:
        _check(entry, args, guard)

    calls()


def _public_callables() -> dict[int, str]:
    found: dict[int, str] = {}
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attribute in module.__all__:
            value = getattr(module, attribute)
            if isinstance(value, type) and issubclass(value, BaseException):
                continue
            if callable(value) or inspect.isclass(value):
                found.setdefault(id(value), f"{name}.{attribute}")
    return found


def test_every_public_callable_is_called_or_exempt() -> None:
    """The surface above follows ``__all__``: a new public class or function is fuzzed too,
    or named in EXEMPT with the reason."""
    covered = {id(e.covers) for e in ENTRIES}
    missing = []
    for ident, qualified in _public_callables().items():
        short_name = qualified.rsplit(".", 1)[1]
        module_name = qualified.rsplit(".", 2)[-2] if qualified.count(".") > 1 else ""
        exempt = short_name in EXEMPT or f"{module_name}.{short_name}" in EXEMPT
        if ident not in covered and not exempt:
            missing.append(qualified)
    assert not missing, f"public names neither fuzzed nor exempt: {sorted(missing)}"


# ------------------------------------------------------------------ the harness can fail


def test_the_check_fails_a_builtin_exception_and_a_hang() -> None:
    """A call raising TypeError, or still running at the timeout, is not acceptable; an
    IotDataError or a return is."""

    def raising(**_: object) -> None:
        raise TypeError("deep inside a dependency")

    def refusing(**_: object) -> None:
        raise InvalidInputError("x must be an int")

    def returning(**kwargs: object) -> dict[str, object]:
        return kwargs

    outcomes = [
        run_entry(entry(f, name=f.__name__, params=("x",)), {"x": 1})
        for f in (raising, refusing, returning)
    ]
    assert [o.acceptable for o in outcomes] == [False, True, True]
    assert isinstance(outcomes[0].error, TypeError)
    release = threading.Event()
    try:
        with pytest.raises(HangError):
            in_thread(release.wait, timeout=0.2)
    finally:
        release.set()


def test_the_guard_refuses_name_lookups_beyond_the_loopback() -> None:
    with NetworkGuard() as network:
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo("example.invalid", 80)
        assert socket.getaddrinfo("127.0.0.1", 80)
    assert network.attempts == ["'example.invalid'"]
