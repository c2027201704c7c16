"""Topics: make sure the ones a pipeline needs exist, with the partitions and retention asked.

:func:`ensure_topics` is idempotent: it creates what is missing, sets the configuration of what
exists, and refuses (rather than silently changes) a partition count that differs, because
changing it moves devices to other partitions and breaks their order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from iotdata._checks import (
    check_instance,
    check_int,
    check_mapping,
    check_seconds,
    check_text,
    each,
    optional,
)
from iotdata.errors import DeliveryError, InvalidInputError
from iotdata.kafka._connect import check_bootstrap, start_client
from iotdata.kafka._security import KafkaSecurity

__all__ = ["TopicSpec", "ensure_topics"]

_TOPIC_ALREADY_EXISTS = 36
_LEGAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _topic_name(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if (
        type(value) is not str
        or not 0 < len(value) <= 249
        or not set(value) <= _LEGAL
        or value in {".", ".."}
    ):
        raise InvalidInputError(
            f"a Kafka topic name is 1-249 of [a-zA-Z0-9._-] (not . or ..), got {value!r}"
        )


def _at_least_one(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    # Kafka's protocol holds partition counts in 32 bits and replication factors in 16
    check_int(attribute.name, value, minimum=1, maximum=_MAXIMA[attribute.name])


_MAXIMA = {"partitions": 2**31 - 1, "replication": 2**15 - 1}


def _topic_config(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    for key, setting in check_mapping("config", value).items():
        check_text("a config name", key)
        check_text(f"config[{key!r}]", setting, empty=True)


@attrs.frozen(kw_only=True)
class TopicSpec:
    """A topic as a pipeline wants it."""

    name: str = attrs.field(validator=_topic_name)
    partitions: int = attrs.field(default=12, validator=_at_least_one)
    replication: int = attrs.field(default=1, validator=_at_least_one)
    #: ``retention.ms`` (-1: for ever); None keeps the broker's default.
    retention_ms: int | None = attrs.field(default=None, validator=optional(check_int, minimum=-1))
    #: Further topic configuration, e.g. ``{"cleanup.policy": "compact"}`` (str to str).
    config: Mapping[str, str] = attrs.field(factory=dict, validator=_topic_config)

    def configs(self) -> dict[str, str]:
        out = dict(self.config)
        if self.retention_ms is not None:
            out["retention.ms"] = str(self.retention_ms)
        return out


async def ensure_topics(
    bootstrap: str,
    *specs: TopicSpec,
    timeout: float = 30.0,
    security: KafkaSecurity | None = None,
) -> dict[str, int]:
    """Create the topics that are missing and set the configuration of all; return each
    topic's partition count. ``security``: how to connect (TLS, SASL), as the producer does.

    Raises :class:`~iotdata.errors.InvalidInputError` when an existing topic has another
    partition count than asked, :class:`~iotdata.errors.ConnectError` when Kafka cannot be
    reached, and :class:`~iotdata.errors.DeliveryError` when Kafka refuses a change.
    """
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    check_bootstrap(bootstrap)
    each("specs", specs, check_instance, kind=TopicSpec)
    check_seconds("timeout", timeout, zero=False)
    check_instance("security", security, KafkaSecurity, none=True)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=int(timeout * 1000),
        **(security or KafkaSecurity()).client_options(),
    )
    await start_client(admin, bootstrap)
    try:
        return await _ensure(admin, specs, timeout)
    except KafkaError as exc:
        raise DeliveryError(f"Kafka admin request failed: {exc}", retriable=exc.retriable) from exc
    finally:
        await admin.close()


async def _ensure(admin: Any, specs: tuple[TopicSpec, ...], timeout: float) -> dict[str, int]:
    from aiokafka.admin import NewTopic  # noqa: PLC0415
    from aiokafka.admin.config_resource import (  # noqa: PLC0415
        ConfigResource,
        ConfigResourceType,
    )

    wanted = [
        NewTopic(spec.name, spec.partitions, spec.replication, topic_configs=spec.configs())
        for spec in specs
    ]
    response = await admin.create_topics(wanted, timeout_ms=int(timeout * 1000))
    existing = []
    for name, code, *message in response.topic_errors:
        if code == _TOPIC_ALREADY_EXISTS:
            existing.append(name)
        elif code != 0:
            raise DeliveryError(f"cannot create topic {name!r}: error {code} {message}")
    counts = {spec.name: spec.partitions for spec in specs}
    if existing:
        for topic in await admin.describe_topics(existing):
            counts[topic["topic"]] = len(topic["partitions"])
        for spec in specs:
            if counts[spec.name] != spec.partitions:
                raise InvalidInputError(
                    f"topic {spec.name!r} exists with {counts[spec.name]} partitions, not "
                    f"{spec.partitions}: changing the count would move devices between "
                    "partitions; create a new topic instead"
                )
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, spec.name, configs=spec.configs())
            for spec in specs
            if spec.name in existing and spec.configs()
        ]
        if resources:
            await admin.alter_configs(resources)
    return counts
