"""Where and how to connect: broker address, credentials, TLS and protocol options."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from iotdata._checks import (
    check_instance,
    check_int,
    check_seconds,
    check_text,
    optional,
    validated,
)
from iotdata._tls import TlsSettings
from iotdata.errors import InvalidInputError

__all__ = ["MqttSettings", "TlsSettings"]

_SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}
_PROTOCOLS = {"5": 5, "5.0": 5, "3.1.1": 4, "311": 4, "4": 4}


def _port(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or not 0 < value < 65536:
        raise InvalidInputError(f"port must be in 1..65535, got {value!r}")


def _protocol(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value not in (4, 5):
        raise InvalidInputError("protocol must be 5 (MQTT 5) or 4 (MQTT 3.1.1)")


def _host(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    host = check_text("host", value)
    if any(c.isspace() or c in "/?#@" for c in host) or len(host) > _MAX_HOST:
        raise InvalidInputError(f"host must be a host name or an IP address: {host!r:.60}")


#: Longest host name DNS allows.
_MAX_HOST = 253
#: The largest packet MQTT can describe (its remaining length is at most 268,435,455 bytes).
MAX_PACKET_SIZE = 268_435_455


@attrs.frozen(kw_only=True)
class MqttSettings:
    """How to reach an MQTT broker. Build it with :meth:`from_url` or field by field.

    Every field is checked: a host name or IP address, a port in 1..65535, str credentials, a
    :class:`TlsSettings`, protocol 5 or 4, ``keepalive`` whole seconds in 1..65535, a finite
    ``connect_timeout`` > 0, ``max_packet_size`` in 1..268,435,455 bytes; anything else raises
    :class:`~iotdata.InvalidInputError` naming the field.
    """

    host: str = attrs.field(default="127.0.0.1", validator=_host)
    port: int = attrs.field(default=1883, validator=_port)
    username: str | None = attrs.field(default=None, validator=optional(check_text, empty=True))
    password: str | None = attrs.field(
        default=None, repr=False, validator=optional(check_text, empty=True)
    )
    tls: TlsSettings | None = attrs.field(
        default=None, validator=optional(check_instance, kind=TlsSettings)
    )
    #: 5 for MQTT 5, 4 for MQTT 3.1.1.
    protocol: int = attrs.field(default=5, validator=_protocol)
    #: Seconds between keepalive pings when idle; the broker drops the client after 1.5x.
    keepalive: int = attrs.field(
        default=30, validator=validated(check_int, minimum=1, maximum=65535)
    )
    #: Seconds to wait for the broker's answer to a connection attempt.
    connect_timeout: float = attrs.field(
        default=10.0, validator=validated(check_seconds, zero=False)
    )
    #: Largest MQTT packet sent; batches are split below it (the broker may lower it in CONNACK).
    max_packet_size: int = attrs.field(
        default=256 * 1024, validator=validated(check_int, minimum=1, maximum=MAX_PACKET_SIZE)
    )

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> MqttSettings:
        """``mqtt://[user[:password]@]host[:port][?protocol=3.1.1&keepalive=30]``.

        ``mqtts://`` (or ``ssl://``) turns TLS on with the system's trust store; pass
        ``tls=TlsSettings(...)`` for your own CA or client certificates. ``overrides`` are
        fields of :class:`MqttSettings`.

        Raises:
            InvalidInputError: ``url`` is no MQTT URL, or a field is invalid (or unknown).
        """
        check_text("url", url)
        unknown = set(overrides) - _FIELDS
        if unknown:
            raise InvalidInputError(f"unknown MqttSettings validated(s) {sorted(unknown)}")
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # an invalid IPv6 address in brackets, say
            raise InvalidInputError(f"not an MQTT URL: {url!r:.60} ({exc})") from None
        if parts.scheme not in _SCHEMES or not parts.hostname:
            raise InvalidInputError(
                f"not an MQTT URL (mqtt://host:port or mqtts://...): {url!r:.60}"
            )
        secure = _SCHEMES[parts.scheme]
        try:
            port = parts.port
        except ValueError as exc:
            raise InvalidInputError(f"bad port in {url!r:.60}") from exc
        if port is None:
            port = 8883 if secure else 1883
        fields: dict[str, Any] = {"host": parts.hostname, "port": port}
        if parts.username:
            fields["username"] = unquote(parts.username)
        if parts.password:
            fields["password"] = unquote(parts.password)
        if secure:
            fields["tls"] = TlsSettings()
        for key, values in parse_qs(parts.query).items():
            fields[key] = _query_value(key, values[-1])
        fields.update(overrides)
        return cls(**fields)

    @property
    def url(self) -> str:
        """The broker's address as a URL, without credentials (safe to log)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


_FIELDS = frozenset(
    {
        "host",
        "port",
        "username",
        "password",
        "tls",
        "protocol",
        "keepalive",
        "connect_timeout",
        "max_packet_size",
    }
)


def _query_value(key: str, text: str) -> Any:
    if key == "protocol":
        if text not in _PROTOCOLS:
            raise InvalidInputError(f"protocol must be 5 or 3.1.1, got {text!r}")
        return _PROTOCOLS[text]
    if key in ("keepalive", "max_packet_size"):
        if not text.isdigit():
            raise InvalidInputError(f"{key} must be a whole number, got {text!r}")
        return int(text)
    if key == "connect_timeout":
        try:
            return float(text)
        except ValueError:
            raise InvalidInputError(f"connect_timeout must be a number, got {text!r}") from None
    raise InvalidInputError(f"unknown MQTT URL option {key!r}")
