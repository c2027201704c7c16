"""The MQTT topic scheme: plain functions from names to topics and back, no I/O.

==========================================  ===========  =========================================
topic                                       QoS, retain  payload
==========================================  ===========  =========================================
``{prefix}/{device}/telemetry``             1            an iotdata codec frame
``{prefix}/{device}/state``                 1, retained  ``{"online": bool, ...}`` (JSON)
``{prefix}/{device}/commands/{name}``       1            ``{"id": ..., "args": ...}`` (JSON)
``{prefix}/{device}/commands/{name}/result`` 1           ``{"id": ..., "ok": ..., ...}`` (JSON)
``{prefix}/{device}/config/desired``        1, retained  ``{"version": n, "config": {...}}``
``{prefix}/{device}/config/reported``       1, retained  ``{"version": n, ...}``
==========================================  ===========  =========================================
"""

from __future__ import annotations

import attrs

from iotdata.errors import InvalidInputError
from iotdata.model import validate_device_id

__all__ = ["TopicKind", "Topics", "check_topic", "split_filter"]

#: What a topic carries, as :meth:`Topics.parse` reports it.
TopicKind = str

TELEMETRY = "telemetry"
STATE = "state"
COMMAND = "command"
COMMAND_RESULT = "command-result"
CONFIG_DESIRED = "config-desired"
CONFIG_REPORTED = "config-reported"

_WILDCARDS = frozenset("+#")
#: Longest topic or filter MQTT can carry, in UTF-8 bytes.
MAX_TOPIC_BYTES = 65535


def _check_text(kind: str, text: object) -> str:
    if type(text) is not str or not text:
        raise InvalidInputError(f"an MQTT {kind} must be a non-empty string: {text!r:.60}")
    if "\0" in text or len(text.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise InvalidInputError(f"an MQTT {kind} has no NUL and at most 65535 bytes: {text!r:.60}")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise InvalidInputError(f"an MQTT {kind} must be valid UTF-8: {text!r:.60}") from None
    return text


def check_topic(topic: object) -> str:
    """``topic`` if it is a topic name one may publish to (no wildcards), else InvalidInputError."""
    name = _check_text("topic", topic)
    if not _WILDCARDS.isdisjoint(name):
        raise InvalidInputError(f"a topic to publish to has no + or # wildcard: {name!r}")
    return name


def split_filter(topic_filter: object) -> tuple[str | None, str]:
    """``(shared group or None, filter)`` of a valid topic filter, else InvalidInputError.

    ``+`` must be a whole level and ``#`` the whole last level; a shared subscription is
    ``$share/{group}/{filter}`` with a group without ``/``, ``+`` or ``#``.
    """
    text = _check_text("topic filter", topic_filter)
    group = None
    if text.startswith("$share/"):
        parts = text.split("/", 2)
        if len(parts) < 3 or not parts[1] or not _WILDCARDS.isdisjoint(parts[1]) or not parts[2]:
            raise InvalidInputError(f"a shared subscription is $share/group/filter: {text!r}")
        group, text = parts[1], parts[2]
    levels = text.split("/")
    for index, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            raise InvalidInputError(f"+ and # must be whole levels of a filter: {topic_filter!r}")
        if level == "#" and index != len(levels) - 1:
            raise InvalidInputError(f"# must be the last level of a filter: {topic_filter!r}")
    return group, text


def _check_prefix(instance: object, attribute: attrs.Attribute[str], prefix: str) -> None:
    if type(prefix) is not str or not prefix or not _WILDCARDS.isdisjoint(prefix):
        raise InvalidInputError(
            f"topic prefix must be a non-empty string without + or #: {prefix!r:.60}"
        )
    if prefix.startswith("$") or prefix.startswith("/") or prefix.endswith("/"):
        raise InvalidInputError(
            f"topic prefix must not start with $ or / or end with /: {prefix!r:.60}"
        )
    _check_text("topic prefix", prefix)


def _check_command(name: str) -> str:
    if type(name) is not str or not name or not name.isprintable() or set(name) & set("+#/"):
        raise InvalidInputError(f"command names are printable, without +, # or /: {name!r}")
    return name


@attrs.frozen
class Topics:
    """Topic names under ``prefix`` (``"iotdata"`` by default; it may contain ``/``)."""

    prefix: str = attrs.field(default="iotdata", validator=_check_prefix)

    def _device(self, device_id: str) -> str:
        return f"{self.prefix}/{validate_device_id(device_id)}"

    def telemetry(self, device_id: str) -> str:
        return f"{self._device(device_id)}/telemetry"

    def state(self, device_id: str) -> str:
        return f"{self._device(device_id)}/state"

    def command(self, device_id: str, name: str) -> str:
        return f"{self._device(device_id)}/commands/{_check_command(name)}"

    def command_result(self, device_id: str, name: str) -> str:
        return f"{self.command(device_id, name)}/result"

    def commands(self, device_id: str) -> str:
        """Filter for every command sent to one device."""
        return f"{self._device(device_id)}/commands/+"

    def config_desired(self, device_id: str) -> str:
        return f"{self._device(device_id)}/config/desired"

    def config_reported(self, device_id: str) -> str:
        return f"{self._device(device_id)}/config/reported"

    def all_telemetry(self, shared_group: str | None = None) -> str:
        """Filter for the telemetry of every device, optionally as a shared subscription."""
        topic = f"{self.prefix}/+/telemetry"
        if shared_group is None:
            return topic
        if type(shared_group) is not str:
            raise InvalidInputError(f"shared_group must be a str or None: {shared_group!r:.60}")
        if not shared_group or not _WILDCARDS.isdisjoint(shared_group) or "/" in shared_group:
            raise InvalidInputError(f"bad shared subscription group {shared_group!r}")
        return f"$share/{shared_group}/{topic}"

    def all_states(self) -> str:
        return f"{self.prefix}/+/state"

    def parse(self, topic: str) -> tuple[str, TopicKind, str | None] | None:
        """``(device_id, kind, command name or None)`` for a topic of this scheme, else None.

        Raises:
            InvalidInputError: ``topic`` is not a str.
        """
        if type(topic) is not str:
            raise InvalidInputError(f"an MQTT topic must be a str: {topic!r:.60}")
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) < 2 or not parts[0]:
            return None
        device_id, rest = parts[0], parts[1:]
        match rest:
            case ["telemetry"]:
                return device_id, TELEMETRY, None
            case ["state"]:
                return device_id, STATE, None
            case ["commands", name] if name:
                return device_id, COMMAND, name
            case ["commands", name, "result"] if name:
                return device_id, COMMAND_RESULT, name
            case ["config", "desired"]:
                return device_id, CONFIG_DESIRED, None
            case ["config", "reported"]:
                return device_id, CONFIG_REPORTED, None
        return None
