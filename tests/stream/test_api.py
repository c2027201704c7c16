"""The public surface of iotdata.stream, the purity of its core, and the benchmark helper."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import iotdata.stream
from benchmarks._stream_core import measure

PACKAGE = Path(iotdata.stream.__file__).parent
# The operator core (the runtime modules beside it do I/O on purpose).
CORE = [
    "_aggregations",
    "_common",
    "_dedup",
    "_detectors",
    "_errors",
    "_pipeline",
    "_results",
    "_sketch",
    "_steps",
    "_windowed",
    "_windows",
]
# Modules the operator core must not use: it does no I/O, keeps no threads, reads no clock.
IMPURE = {"asyncio", "threading", "socket", "time", "os", "subprocess", "selectors", "random"}


def test_all_is_honest() -> None:
    exported = iotdata.stream.__all__
    assert len(set(exported)) == len(exported)
    for name in exported:
        assert hasattr(iotdata.stream, name), name
    for name, value in vars(iotdata.stream).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if getattr(value, "__module__", "").startswith("iotdata.stream") and callable(value):
            assert name in exported, f"iotdata.stream.{name} is public but not exported"


def test_the_core_imports_no_io_threads_or_clocks() -> None:
    for path in (PACKAGE / f"{name}.py" for name in CORE):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not names & IMPURE, f"{path.name} imports {names & IMPURE}"


def test_the_micro_benchmark_runs_and_checks_its_output() -> None:
    figures = measure(readings=20_000, devices=100, repeats=1)
    assert figures["readings"] == 20_000
    assert figures["windows"] == 100 * 20
    assert figures["readings_per_s"] > 0
