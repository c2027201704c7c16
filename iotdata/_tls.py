"""TLS settings shared by the MQTT and Kafka connections."""

from __future__ import annotations

import os.path
from typing import TYPE_CHECKING, Any

import attrs

from iotdata._checks import check_path, check_text, optional
from iotdata.errors import InvalidInputError

if TYPE_CHECKING:
    import ssl

__all__ = ["TlsSettings"]


def _optional_file(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not os.path.isfile(check_path(attribute.name, value)):
        raise InvalidInputError(f"{attribute.name}: no such file {value!r:.60}")


@attrs.frozen(kw_only=True)
class TlsSettings:
    """TLS to a server (an MQTT broker, Kafka brokers); with ``cert_file`` and ``key_file``,
    mutual TLS: the client shows its own certificate.

    ``ca_file`` is the CA bundle that signed the server's certificate (the system's trust store
    when None). The server's host name (or IP address) is checked against its certificate.
    """

    ca_file: str | None = attrs.field(default=None, validator=_optional_file)
    cert_file: str | None = attrs.field(default=None, validator=_optional_file)
    key_file: str | None = attrs.field(default=None, validator=_optional_file)
    key_password: str | None = attrs.field(
        default=None, repr=False, validator=optional(check_text, empty=True)
    )

    def __attrs_post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise InvalidInputError("mutual TLS needs both cert_file and key_file")

    def context(self) -> ssl.SSLContext:
        """A client context: TLS 1.2 or newer, certificate and host name verified."""
        import ssl  # noqa: PLC0415 (loaded with the first TLS connection, not at import)

        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.cert_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file, self.key_password)
        except (ssl.SSLError, OSError) as exc:
            raise InvalidInputError(f"cannot load TLS files: {exc}") from exc
        return context
