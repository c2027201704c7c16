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

__all__ = ["TopicKind", "Topics"]

#: What a topic carries, as :meth:`Topics.parse` reports it.
TopicKind = str

TELEMETRY = "telemetry"
STATE = "state"
COMMAND = "command"
COMMAND_RESULT = "command-result"
CONFIG_DESIRED = "config-desired"
CONFIG_REPORTED = "config-reported"

_WILDCARDS = frozenset("+#")


def _check_prefix(instance: object, attribute: attrs.Attribute[str], prefix: str) -> None:
    if type(prefix) is not str or not prefix or not _WILDCARDS.isdisjoint(prefix):
        raise InvalidInputError(
            f"topic prefix must be a non-empty string without + or #: {prefix!r}"
        )
    if prefix.startswith("$") or prefix.startswith("/") or prefix.endswith("/"):
        raise InvalidInputError(
            f"topic prefix must not start with $ or / or end with /: {prefix!r}"
        )


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
        if not shared_group or not _WILDCARDS.isdisjoint(shared_group) or "/" in shared_group:
            raise InvalidInputError(f"bad shared subscription group {shared_group!r}")
        return f"$share/{shared_group}/{topic}"

    def all_states(self) -> str:
        return f"{self.prefix}/+/state"

    def parse(self, topic: str) -> tuple[str, TopicKind, str | None] | None:
        """``(device_id, kind, command name or None)`` for a topic of this scheme, else None."""
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
