"""How a Kafka client proves who it is and protects the connection: TLS, mutual TLS, SASL."""

from __future__ import annotations

import os
from typing import Any

import attrs

from iotdata._checks import check_instance, check_text, optional
from iotdata._tls import TlsSettings
from iotdata.errors import InvalidInputError

__all__ = ["SASL_MECHANISMS", "KafkaSecurity"]

#: The SASL mechanisms a :class:`KafkaSecurity` can log in with.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@attrs.frozen(kw_only=True)
class KafkaSecurity:
    """Security of the connections to Kafka; the default is none (``PLAINTEXT``).

    - ``tls``: TLS to the brokers (``TlsSettings()`` trusts the system's CAs; ``ca_file`` names
      your own CA; ``cert_file`` and ``key_file`` make it mutual TLS, the client certificate
      being its identity).
    - ``sasl_mechanism`` with ``username`` and ``password``: a SASL login, ``PLAIN`` (managed
      clusters' API keys) or ``SCRAM-SHA-256``/``SCRAM-SHA-512``. Over TLS unless ``tls`` is
      None, in which case the protocol is ``SASL_PLAINTEXT`` and ``PLAIN`` sends the password
      readable by anyone on the path: use that only inside a trusted network.

    The password is never shown by ``repr``. :meth:`from_env` reads it from
    ``IOTDATA_KAFKA_PASSWORD`` so it stays off command lines and out of code.
    """

    tls: TlsSettings | None = attrs.field(
        default=None, validator=optional(check_instance, kind=TlsSettings)
    )
    sasl_mechanism: str | None = None
    username: str | None = attrs.field(default=None, validator=optional(check_text))
    password: str | None = attrs.field(
        default=None, repr=False, validator=optional(check_text, empty=True)
    )

    def __attrs_post_init__(self) -> None:
        if self.sasl_mechanism is None:
            if self.username is not None or self.password is not None:
                raise InvalidInputError(
                    "a Kafka username or password needs a SASL mechanism: "
                    + ", ".join(SASL_MECHANISMS)
                )
            return
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise InvalidInputError(
                f"SASL mechanism must be one of {', '.join(SASL_MECHANISMS)}, "
                f"got {self.sasl_mechanism!r:.60}"
            )
        if not self.username or self.password is None:
            raise InvalidInputError(
                f"SASL {self.sasl_mechanism} needs a username and a password "
                "(the password from IOTDATA_KAFKA_PASSWORD on the command line)"
            )

    @classmethod
    def from_env(
        cls,
        *,
        tls: TlsSettings | None = None,
        sasl_mechanism: str | None = None,
        username: str | None = None,
    ) -> KafkaSecurity:
        """These settings with the password from the environment variable
        ``IOTDATA_KAFKA_PASSWORD`` (when a SASL mechanism is given)."""
        password = os.environ.get("IOTDATA_KAFKA_PASSWORD") if sasl_mechanism else None
        return cls(tls=tls, sasl_mechanism=sasl_mechanism, username=username, password=password)

    @property
    def protocol(self) -> str:
        """Kafka's name for it: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``."""
        if self.sasl_mechanism is None:
            return "SSL" if self.tls is not None else "PLAINTEXT"
        return "SASL_SSL" if self.tls is not None else "SASL_PLAINTEXT"

    def client_options(self) -> dict[str, Any]:
        """The arguments of aiokafka's clients (producer, consumer, admin) these stand for.
        Loading the TLS files happens here: a bad file is an
        :class:`~iotdata.errors.InvalidInputError` before any connection."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls is not None:
            options["ssl_context"] = self.tls.context()
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.username
            options["sasl_plain_password"] = self.password
        return options
