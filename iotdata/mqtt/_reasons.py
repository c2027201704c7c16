"""What the broker's MQTT 5 reason codes mean for a publish and a subscription: pure, no I/O.

A PUBACK below 0x80 is not always delivery. 0x10 ("no matching subscribers") means the broker
accepted the message and dropped it, because no subscription matched: after a restart, Mosquitto
2.0 restores a persistent session's ordinary subscriptions but not its shared ones, so until the
gateways re-subscribe, telemetry is acknowledged with 0x10 and thrown away. iotdata's policy:

* a publish is delivered only on reason 0x00 (or 0x10 for a retained message, which the broker
  keeps); on 0x10 it fails with
  :class:`~iotdata.errors.NoSubscribersError` (the device client keeps the readings queued and
  sends them again with backoff), on 0x80 and above with
  :class:`~iotdata.errors.PublishRefusedError`, retriable or not as the table says;
* a subscription is in place only when its SUBACK grants at least the QoS asked for; anything
  else is a :class:`~iotdata.errors.SubscribeRefusedError`.

MQTT 3.1.1 has no reason codes: a PUBACK there is always "accepted", whatever the broker then
did with the message (see docs/device.md for what that can cost with shared subscriptions).
"""

from __future__ import annotations

from iotdata.errors import NoSubscribersError, PublishRefusedError, SubscribeRefusedError

__all__ = ["PUBACK_REASONS", "SUBACK_REASONS", "publish_outcome", "subscribe_outcome"]

NO_MATCHING_SUBSCRIBERS = 0x10

#: PUBACK reason codes (MQTT 5.0, 3.4.2.1): name, and whether sending again may succeed.
PUBACK_REASONS: dict[int, tuple[str, bool]] = {
    0x00: ("success", True),
    0x10: ("no matching subscribers", True),
    0x80: ("unspecified error", True),
    0x83: ("implementation specific error", True),
    0x87: ("not authorized", False),
    0x90: ("topic name invalid", False),
    0x91: ("packet identifier in use", True),
    0x97: ("quota exceeded", True),
    0x99: ("payload format invalid", False),
}

#: SUBACK reason codes of refusals (MQTT 5.0, 3.9.3); 0x00-0x02 grant QoS 0-2.
SUBACK_REASONS: dict[int, str] = {
    0x80: "unspecified error",
    0x83: "implementation specific error",
    0x87: "not authorized",
    0x8F: "topic filter invalid",
    0x91: "packet identifier in use",
    0x97: "quota exceeded",
    0x9E: "shared subscriptions not supported",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}


def publish_outcome(code: int, topic: str, *, retained: bool = False) -> PublishRefusedError | None:
    """None when a PUBACK with ``code`` means the broker took the message on; else the error.

    Only 0x00 is delivery, and 0x10 for a ``retained`` message (the broker keeps it for the
    subscribers to come); unknown codes below 0x80 count as not delivered either.
    """
    if code == 0x00 or (code == NO_MATCHING_SUBSCRIBERS and retained):
        return None
    name, retriable = PUBACK_REASONS.get(code, ("unknown reason", code < 0x80))
    message = f"the broker did not take a message to {topic}: {name} (0x{code:02X})"
    if code == NO_MATCHING_SUBSCRIBERS:
        return NoSubscribersError(message)
    return PublishRefusedError(message, reason_code=code, retriable=retriable)


def subscribe_outcome(code: int, topic_filter: str, qos: int) -> SubscribeRefusedError | None:
    """None when a SUBACK ``code`` grants ``qos`` or more for ``topic_filter``; else the error."""
    if code < 0x80:
        if code >= qos:
            return None
        return SubscribeRefusedError(
            f"the broker granted QoS {code} for {topic_filter}, not the QoS {qos} asked for",
            reason_code=code,
        )
    name = SUBACK_REASONS.get(code, "unknown reason")
    return SubscribeRefusedError(
        f"the broker refused the subscription {topic_filter}: {name} (0x{code:02X})",
        reason_code=code,
    )
