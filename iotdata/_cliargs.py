"""Argument types shared by the subcommands of ``iotdata`` (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from pathlib import Path

import attrs

from iotdata._tls import TlsSettings
from iotdata.errors import InvalidInputError
from iotdata.kafka._security import SASL_MECHANISMS, KafkaSecurity
from iotdata.mqtt import MqttSettings, Topics

__all__ = [
    "add_kafka_security",
    "add_mqtt_tls",
    "check_writable",
    "kafka_security",
    "mqtt_url",
    "mqtt_with_tls",
    "port",
    "positive_float",
    "positive_int",
    "probability",
    "rate",
    "seconds",
    "topics",
]


def positive_int(text: str) -> int:
    if not text.strip().isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


#: The longest wait or duration an option takes, about 31 years: any more overflows the
#: platform's timeouts (threading's wait takes at most ``threading.TIMEOUT_MAX``).
MAX_SECONDS = 1e9
#: The fastest rate of readings per device: timestamps are microseconds.
MAX_RATE = 1e6


def seconds(text: str) -> float:
    """A positive number of seconds, at most :data:`MAX_SECONDS`."""
    value = positive_float(text)
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_SECONDS:,.0f} seconds, got {text!r}"
        )
    return value


def rate(text: str) -> float:
    """Readings per second: positive, at most :data:`MAX_RATE` (one a microsecond)."""
    value = positive_float(text)
    if value > MAX_RATE:
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_RATE:,.0f} readings a second (timestamps are microseconds), "
            f"got {text!r}"
        )
    return value


def port(text: str) -> int:
    """A TCP port number, 0 to 65535 (0: any free port)."""
    if not text.strip().isdecimal() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def check_writable(path: Path) -> str | None:
    """Why ``path`` cannot be written, or None: tried before a long run that ends writing it.

    It opens the file for appending, which changes nothing in an existing file, and removes
    it again if it did not exist. Non-blocking: a FIFO without a reader is refused at once.
    """
    existed = path.exists()
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0)
    try:
        os.close(os.open(path, flags, 0o666))
    except OSError as exc:
        return f"cannot write {path}: {exc.strerror}"
    if not existed:
        with contextlib.suppress(OSError):
            path.unlink()
    return None


def mqtt_url(text: str) -> MqttSettings:
    try:
        return MqttSettings.from_url(text)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def topics(text: str) -> Topics:
    try:
        return Topics(text)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_kafka_security(parser: argparse.ArgumentParser) -> None:
    """The ``--kafka-tls/-ca/-cert/-key/-sasl/-user`` options (read by :func:`kafka_security`)."""
    group = parser.add_argument_group(
        "Kafka security",
        "TLS, mutual TLS and SASL logins to Kafka. The SASL password is read from the\n"
        "environment variable IOTDATA_KAFKA_PASSWORD, never from the command line.",
    )
    group.add_argument(
        "--kafka-tls", action="store_true", help="TLS to Kafka, trusting the system's CAs"
    )
    group.add_argument("--kafka-ca", metavar="FILE", help="TLS, trusting this CA bundle (PEM)")
    group.add_argument(
        "--kafka-cert", metavar="FILE", help="mutual TLS: the client certificate (PEM)"
    )
    group.add_argument("--kafka-key", metavar="FILE", help="mutual TLS: its private key (PEM)")
    group.add_argument(
        "--kafka-sasl",
        choices=SASL_MECHANISMS,
        metavar="MECHANISM",
        help=f"log in with SASL: {', '.join(SASL_MECHANISMS)} (needs --kafka-user)",
    )
    group.add_argument("--kafka-user", metavar="NAME", help="the SASL username")


def kafka_security(args: argparse.Namespace) -> KafkaSecurity:
    """What :func:`add_kafka_security`'s options ask for (InvalidInputError when they clash)."""
    files = (args.kafka_ca, args.kafka_cert, args.kafka_key)
    tls = None
    if args.kafka_tls or any(files):
        tls = TlsSettings(ca_file=files[0], cert_file=files[1], key_file=files[2])
    return KafkaSecurity.from_env(tls=tls, sasl_mechanism=args.kafka_sasl, username=args.kafka_user)


def add_mqtt_tls(parser: argparse.ArgumentParser) -> None:
    """``--mqtt-ca/-cert/-key`` (read by :func:`mqtt_with_tls`)."""
    group = parser.add_argument_group(
        "MQTT TLS",
        "An mqtts:// URL turns TLS on with the system's CAs; these name your own CA, or a\n"
        "client certificate for mutual TLS (they need an mqtts:// URL).",
    )
    group.add_argument("--mqtt-ca", metavar="FILE", help="trust this CA bundle (PEM)")
    group.add_argument("--mqtt-cert", metavar="FILE", help="mutual TLS: the client certificate")
    group.add_argument("--mqtt-key", metavar="FILE", help="mutual TLS: its private key (PEM)")


def mqtt_with_tls(settings: MqttSettings, args: argparse.Namespace) -> MqttSettings:
    """``settings`` with the TLS files of :func:`add_mqtt_tls`'s options, when any is given."""
    files = (args.mqtt_ca, args.mqtt_cert, args.mqtt_key)
    if not any(files):
        return settings
    if settings.tls is None:
        raise InvalidInputError("--mqtt-ca, --mqtt-cert and --mqtt-key need an mqtts:// URL")
    tls = TlsSettings(ca_file=files[0], cert_file=files[1], key_file=files[2])
    return attrs.evolve(settings, tls=tls)
