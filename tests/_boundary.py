"""The machinery of tests/test_api_boundary.py: wrong values, entry points, and one bounded call.

An :class:`Entry` is one public constructor, function or method. Its parameters come from its
signature; ``good`` gives the values a call needs to get anywhere (a device id, an open queue),
``subject`` makes the object a method is called on (and closes it afterwards). The test draws,
for one or two parameters at a time, a value from :data:`WRONG` (or a nested mix of them) and
calls the entry point in a worker thread (under asyncio for async ones), bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import reprlib
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
from hypothesis import strategies as st

from iotdata.errors import IotDataError

#: Longest a single call may take before it counts as a hang (the machine is shared: generous).
CALL_TIMEOUT = 20.0


def _anything(*args: object, **kwargs: object) -> None:
    return None


#: The pool of wrong values the brief names: wrong types, out-of-range numbers, odd strings.
WRONG: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1.5,
    math.nan,
    math.inf,
    -math.inf,
    2**64,
    -(2**63) - 1,
    "",
    " ",
    "\ud800",
    "a/+#",
    "x" * 100_000,
    b"\xff",
    bytearray(b"\xff"),
    [],
    [1],
    {},
    {"a": 1},
    (),
    object(),
    _anything,
    Path("/proc/x"),
)

_SCALARS = st.sampled_from(WRONG)
#: Wrong values, and lists, tuples and dicts of them (a reading of the wrong shape, say).
WRONG_VALUES = st.one_of(
    _SCALARS,
    _SCALARS,
    st.recursive(
        _SCALARS,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.lists(inner, max_size=3).map(tuple)
            | st.dictionaries(st.sampled_from(["a", "", "\ud800", "temp"]), inner, max_size=2)
        ),
        max_leaves=4,
    ),
)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40
_REPR.maxlist = _REPR.maxtuple = 4
_REPR.maxdict = 3


def short(value: object) -> str:
    return _REPR.repr(value)


# ------------------------------------------------------------------------------- entry points


Subject = Callable[[], Any]  # a context manager factory (sync or async) yielding the subject


@contextlib.contextmanager
def no_subject() -> Iterator[None]:
    yield None


@attrs.frozen
class Entry:
    """One entry point. ``invoke(subject, args)`` calls it; ``params`` are what may be fuzzed."""

    name: str
    invoke: Callable[[Any, dict[str, Any]], Any]
    params: tuple[str, ...]
    good: Callable[[Any], dict[str, Any]]
    subject: Subject = no_subject
    asynchronous: bool = False
    examples: int = 40
    #: Parameters whose pool leaves out some values (e.g. None would mean "for ever").
    pools: Mapping[str, st.SearchStrategy[Any]] = attrs.field(factory=dict)
    marks: tuple[Any, ...] = ()
    #: The public class or function this entry point belongs to.
    covers: object = None

    def strategy(self) -> st.SearchStrategy[dict[str, Any]]:
        def pool(name: str) -> st.SearchStrategy[Any]:
            return self.pools.get(name, WRONG_VALUES)

        names = st.lists(st.sampled_from(self.params), min_size=1, max_size=2, unique=True)
        return names.flatmap(lambda chosen: st.fixed_dictionaries({n: pool(n) for n in chosen}))


def parameters(target: Callable[..., Any], *, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The names a call can pass: every parameter but ``self``/``cls`` and ``**kwargs``;
    ``*args`` as ``"*name"``."""
    names = []
    for parameter in inspect.signature(target).parameters.values():
        if parameter.name in ("self", "cls") or parameter.name in skip:
            continue
        if parameter.kind is parameter.VAR_KEYWORD:
            continue
        prefix = "*" if parameter.kind is parameter.VAR_POSITIONAL else ""
        names.append(prefix + parameter.name)
    return tuple(names)


def call_with(target: Callable[..., Any], *leading: Any, args: dict[str, Any]) -> Any:
    """``target(*leading, ...)`` with ``args``: ``"*name"`` keys spread as positionals, the
    parameters that are positional-only (or before ``*args``) in order, the rest by name."""
    signature = inspect.signature(target)
    positional: list[Any] = list(leading)
    keywords = dict(args)
    variadic = next(
        (p.name for p in signature.parameters.values() if p.kind is p.VAR_POSITIONAL), None
    )
    if variadic is not None:
        before = []
        for parameter in signature.parameters.values():
            if parameter.kind is parameter.VAR_POSITIONAL:
                break
            before.append(parameter.name)
        for name in before[len(leading) :]:
            if name not in keywords:
                break
            positional.append(keywords.pop(name))
        spread = keywords.pop("*" + variadic, ())
        positional.extend(spread if isinstance(spread, (list, tuple)) else (spread,))
    return target(*positional, **keywords)


def entry(
    target: Callable[..., Any],
    *,
    name: str | None = None,
    good: Mapping[str, Any] | Callable[[Any], dict[str, Any]] | None = None,
    subject: Subject | None = None,
    skip: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
    params: tuple[str, ...] | None = None,
    examples: int = 40,
    asynchronous: bool | None = None,
    pools: Mapping[str, st.SearchStrategy[Any]] | None = None,
    marks: tuple[Any, ...] = (),
    signature: Callable[..., Any] | None = None,
    covers: object = None,
    bound: bool | None = None,
) -> Entry:
    """An entry point ``target``: a class, a function, or an unbound method called on what
    ``subject`` yields (``bound=False``: the subject only feeds ``good``)."""
    if callable(good):
        make_good = good
    else:
        fixed = dict(good or {})

        def make_good(_: Any) -> dict[str, Any]:
            return dict(fixed)

    names = params if params is not None else parameters(signature or target, skip=skip) + extra
    if bound is None:
        bound = subject is not None

    def invoke(subject_value: Any, args: dict[str, Any]) -> Any:
        leading = (subject_value,) if bound else ()
        return call_with(target, *leading, args=args)

    if asynchronous is None:
        asynchronous = inspect.iscoroutinefunction(target)
    return Entry(
        covers=covers if covers is not None else owner(target),
        name=name or target.__qualname__,
        invoke=invoke,
        params=names,
        good=make_good,
        subject=subject or no_subject,
        asynchronous=asynchronous,
        examples=examples,
        pools=dict(pools or {}),
        marks=marks,
    )


def owner(target: Callable[..., Any]) -> object:
    """The public class a method belongs to (the class or function itself otherwise)."""
    if inspect.isclass(target):
        return target
    if inspect.ismethod(target):  # a classmethod, bound to its class
        return target.__self__
    head, _, rest = target.__qualname__.partition(".")
    if rest and "<" not in head:
        return getattr(sys.modules[target.__module__], head)
    return target


# ------------------------------------------------------------------------------- one call


@attrs.frozen
class Outcome:
    error: BaseException | None = None
    hung: bool = False

    @property
    def acceptable(self) -> bool:
        return not self.hung and (self.error is None or isinstance(self.error, IotDataError))


class HangError(Exception):
    pass


def in_thread(work: Callable[[], Any], timeout: float = CALL_TIMEOUT) -> Any:
    """Run ``work`` in a daemon thread; its result, its exception re-raised, or HangError."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="api-boundary-call", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise HangError
    if "error" in box:
        raise box["error"]
    return box.get("result")


class _SetupError(Exception):
    """The test's own set-up failed: a bug of the test, not of the entry point."""


def run_entry(entry: Entry, args: dict[str, Any]) -> Outcome:
    """Call ``entry`` with its good arguments overridden by ``args``; close what it returns."""
    try:
        if entry.asynchronous:
            error = in_thread(lambda: asyncio.run(_async_call(entry, args)))
        else:
            error = in_thread(lambda: _sync_call(entry, args))
    except HangError:
        return Outcome(hung=True)
    return Outcome(error=error)


def _sync_call(entry: Entry, args: dict[str, Any]) -> BaseException | None:
    try:
        manager = entry.subject()
        subject = manager.__enter__()
    except Exception as exc:
        raise _SetupError(f"{entry.name}: set-up failed: {exc!r}") from exc
    try:
        try:
            result = entry.invoke(subject, {**entry.good(subject), **args})
        except Exception as exc:
            return exc
        try:
            dispose(result)
        except Exception as exc:
            return exc
        return None
    finally:
        manager.__exit__(None, None, None)


async def _async_call(entry: Entry, args: dict[str, Any]) -> BaseException | None:
    try:
        manager = entry.subject()
        if hasattr(manager, "__aenter__"):
            subject = await manager.__aenter__()
        else:
            subject = manager.__enter__()
    except Exception as exc:
        raise _SetupError(f"{entry.name}: set-up failed: {exc!r}") from exc
    try:
        try:
            result = entry.invoke(subject, {**entry.good(subject), **args})
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(_awaited(result), CALL_TIMEOUT)
        except Exception as exc:
            return exc
        try:
            await adispose(result)
        except Exception as exc:
            return exc
        return None
    finally:
        if hasattr(manager, "__aexit__"):
            await manager.__aexit__(None, None, None)
        else:
            manager.__exit__(None, None, None)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _close_call(close: Callable[..., Any]) -> Any:
    try:
        accepted = inspect.signature(close).parameters
    except (TypeError, ValueError):
        accepted = {}
    return close(timeout=0) if "timeout" in accepted else close()


def dispose(result: Any) -> None:
    """Close what a sync call returned (a client, a queue, a log...)."""
    close = getattr(result, "close", None)
    if callable(close) and not inspect.isclass(result):
        outcome = _close_call(close)
        if inspect.isawaitable(outcome):
            asyncio.run(_awaited(outcome))


async def adispose(result: Any) -> None:
    """Close what an async call returned; an awaitable it returned (a sink's Opening) is
    awaited first."""
    if inspect.isawaitable(result):
        result = await asyncio.wait_for(_awaited(result), CALL_TIMEOUT)
    if inspect.isclass(result):
        return
    close = getattr(result, "aclose", None) or getattr(result, "close", None)
    if callable(close):
        outcome = _close_call(close)
        if inspect.isawaitable(outcome):
            await asyncio.wait_for(_awaited(outcome), CALL_TIMEOUT)


# ------------------------------------------------------------------------------- the network


_LOCAL = frozenset({"127.0.0.1", "localhost", "::1", b"127.0.0.1", b"localhost", b"::1"})


@attrs.define
class NetworkGuard:
    """While on, a name lookup of anything but the loopback address is refused and recorded:
    no call of the test may send traffic beyond 127.0.0.1 (not even a DNS query)."""

    attempts: list[str] = attrs.Factory(list)
    _original: Any = None

    def __enter__(self) -> NetworkGuard:
        self._original = original = socket.getaddrinfo

        def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(host, (str, bytes)) and host not in _LOCAL:
                self.attempts.append(short(host))
                raise socket.gaierror(socket.EAI_NONAME, "refused by the test's network guard")
            return original(host, *args, **kwargs)

        socket.getaddrinfo = guarded  # type: ignore[assignment]
        return self

    def __exit__(self, *exc_info: object) -> None:
        socket.getaddrinfo = self._original


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def async_subject(factory: Callable[[], Any]) -> AsyncIterator[Any]:
    """An async subject from an async context manager factory (for ``entry(subject=...)``)."""
    async with factory() as value:
        yield value
