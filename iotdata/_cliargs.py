"""Argument types shared by the subcommands of ``iotdata`` (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse
import math

from iotdata.errors import InvalidInputError
from iotdata.mqtt import MqttSettings, Topics

__all__ = ["mqtt_url", "positive_float", "positive_int", "probability", "topics"]


def positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
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


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


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
