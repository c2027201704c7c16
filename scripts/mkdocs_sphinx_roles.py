"""A griffe extension for the API reference: Sphinx roles in docstrings become links.

The docstrings use Sphinx cross-reference roles (``:class:`Pipeline```,
``:meth:`~iotdata.stream.Pipeline.run```) which mkdocstrings shows as text. This rewrites each
into a mkdocs-autorefs link to the documented object (``[`Pipeline`][iotdata.stream.Pipeline]``),
resolving a short name in the scope of the docstring's object as Python would. A name that
does not resolve, or that names an object the reference does not show (a private one), stays
as inline code.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import griffe

ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|attr|exc|data|mod|obj|const):`"
    r"(?:(?P<title>[^`<]+?)\s*<(?P<target>[\w.]+)>|(?P<short>~?)(?P<name>[\w.]+)(?P<call>\(\))?)`"
)


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = ROLE.sub(functools.partial(_link, obj), obj.docstring.value)


def _objects(root: griffe.Object) -> list[griffe.Object]:
    found = [root]
    for member in root.members.values():
        if not member.is_alias:
            found += _objects(member)  # type: ignore[arg-type]
    return found


def _link(obj: griffe.Object, match: re.Match[str]) -> str:
    if match["target"]:  # :meth:`title <target>`
        name, shown = match["target"], f"`{match['title']}`"
    else:
        name, call = match["name"], match["call"] or ""
        shown = f"`{name.rsplit('.', 1)[-1] if match['short'] else name}{call}`"
    target = _resolve(obj, name)
    if target is None:
        return shown
    return f"[{shown}][{target}]"


def _resolve(obj: griffe.Object, name: str) -> str | None:
    """The path under which the reference shows ``name`` as seen from ``obj``, or None when it
    shows no such object (unknown, private, or without a docstring: mkdocstrings hides it)."""
    head, _, rest = name.partition(".")
    path = None
    if head == "iotdata":
        path = name
    else:
        scope: griffe.Object | None = obj if obj.is_class or obj.is_module else obj.parent
        while scope is not None and path is None:
            try:
                base = scope.resolve(head)
            except Exception:  # griffe's NameResolutionError and friends
                scope = scope.parent
                continue
            path = f"{base}.{rest}" if rest else base
    if path is None:
        return None
    try:
        found: Any = obj.package[path.split(".", 1)[1]] if "." in path else obj.package
        while found.is_alias:
            found = found.final_target
    except Exception:  # not loaded, not found, an alias to outside
        return None
    if not found.docstring or found.name.startswith("_"):
        return None
    return _public(found.path)


def _public(path: str) -> str:
    """``iotdata.kafka._security.KafkaSecurity`` -> ``iotdata.kafka.KafkaSecurity`` (each
    public package re-exports the classes of its private modules; members keep their class)."""
    return ".".join(part for part in path.split(".") if not part.startswith("_"))
