"""The device half of commands and desired configuration: plain code, no I/O.

:class:`Control` holds a device's command handlers and its configuration handler, and turns
each incoming message into the reply to publish (a :class:`Reply`); the client publishes it.

* A command arrives on ``.../commands/{name}`` as ``{"id": ..., "args": ...}``; its result, or
  the error, goes to ``.../commands/{name}/result`` with the same id.
* The desired configuration is the retained ``.../config/desired``, ``{"version": n, "config":
  {...}}``, so a device that was offline while it changed applies it at its next connection.
  After the handler returns, ``{"version": n, "config": ...}`` is reported (retained) on
  ``.../config/reported``; a handler that raises reports the rejected version and the error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from iotdata.mqtt import Topics

__all__ = ["CommandHandler", "ConfigHandler", "Control", "Reply"]

log = logging.getLogger("iotdata.device")

CommandHandler = Callable[[Any], Any]
ConfigHandler = Callable[[Mapping[str, Any], int], None]


@attrs.frozen
class Reply:
    """A message the device answers with."""

    topic: str
    document: Mapping[str, Any]
    retain: bool

    def payload(self) -> bytes:
        return json.dumps(self.document, default=str).encode()


@attrs.define
class Control:
    """The commands and configuration of one device."""

    device_id: str
    topics: Topics
    _commands: dict[str, CommandHandler] = attrs.field(factory=dict, init=False)
    _config_handler: ConfigHandler | None = attrs.field(default=None, init=False)
    _config_version: int | None = attrs.field(default=None, init=False)
    _config_pending: tuple[Any, int] | None = attrs.field(default=None, init=False)

    def command(self, name: str, handler: CommandHandler) -> None:
        self.topics.command(self.device_id, name)  # validates the name
        self._commands[name] = handler

    def on_config(self, handler: ConfigHandler) -> Reply | None:
        """Set the configuration handler; the report of a configuration that came before it."""
        self._config_handler = handler
        pending, self._config_pending = self._config_pending, None
        return None if pending is None else self._apply(*pending)

    def command_message(self, topic: str, payload: bytes | bytearray) -> Reply | None:
        """Run the command a message asks for; its result (None: not a command of ours)."""
        parsed = self.topics.parse(topic)
        if parsed is None or parsed[1] != "command" or parsed[2] is None:
            return None
        name = parsed[2]
        request: Any = None
        try:
            request = json.loads(payload)
            handler = self._commands.get(name)
            if handler is None:
                raise LookupError(f"unknown command {name!r}")
            reply = {"id": request.get("id"), "ok": True, "result": handler(request.get("args"))}
        except Exception as exc:
            log.warning("command %s failed: %s", name, exc)
            ident = request.get("id") if isinstance(request, dict) else None
            reply = {"id": ident, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return Reply(self.topics.command_result(self.device_id, name), reply, retain=False)

    def config_message(self, payload: bytes | bytearray) -> Reply | None:
        """Apply a desired configuration; the report (None: nothing to report yet)."""
        try:
            document = json.loads(payload)
            version, config = int(document["version"]), document["config"]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed desired configuration: %s", exc)
            return None
        if self._config_handler is None:
            self._config_pending = (config, version)
            return None
        return self._apply(config, version)

    def _apply(self, config: Any, version: int) -> Reply | None:
        if version == self._config_version or self._config_handler is None:
            return None
        try:
            self._config_handler(config, version)
        except Exception as exc:
            log.warning("configuration version %s not applied: %s", version, exc)
            report = {"version": self._config_version, "rejected": version, "error": str(exc)}
        else:
            self._config_version = version
            report = {"version": version, "config": config}
        return Reply(self.topics.config_reported(self.device_id), report, retain=True)
