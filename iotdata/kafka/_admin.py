"""Topics: make sure the ones a pipeline needs exist, with the partitions and retention asked.

:func:`ensure_topics` is idempotent: it creates what is missing, sets the configuration of what
exists, and refuses (rather than silently changes) a partition count that differs, because
changing it moves devices to other partitions and breaks their order. A topic whose spec names
no replication gets the cluster's ``default.replication.factor`` (read from a broker: the
CreateTopics versions aiokafka speaks cannot leave it to the broker), so that on a replicated
cluster every topic of a pipeline, its checkpoints included, survives the loss of a broker.
On a cluster of several brokers, a broker applies new metadata a moment after the controller:
a topic just created elsewhere is asked about again rather than refused, and the topics created
are usable through any broker once :func:`ensure_topics` returns.
"""

from __future__ import annotations

import asyncio
import time
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
_UNKNOWN_TOPIC = 3
#: Errors of a broker that has not yet applied the metadata of a new topic.
_SETTLING = frozenset({_UNKNOWN_TOPIC, 5})  # 5: LEADER_NOT_AVAILABLE
_SETTLE_POLL = 0.1  # seconds between two questions while a new topic settles
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
    #: Copies of each partition; None (the default) takes the cluster's
    #: ``default.replication.factor``.
    replication: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_at_least_one)
    )
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
    topic's partition count once every broker knows the topics created (within ``timeout``
    seconds). ``security``: how to connect (TLS, SASL), as the producer does.

    Raises :class:`~iotdata.errors.InvalidInputError` when an existing topic has another
    partition count than asked, :class:`~iotdata.errors.ConnectError` when Kafka cannot be
    reached, and :class:`~iotdata.errors.DeliveryError` when Kafka refuses a change (or does
    not tell its ``default.replication.factor`` when a spec leaves the replication to it), or,
    retriable, when its brokers do not describe a topic within ``timeout``.
    """
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    check_bootstrap(bootstrap)
    each("specs", specs, check_instance, kind=TopicSpec)
    check_seconds("timeout", timeout, zero=False)
    check_instance("security", security, KafkaSecurity, none=True)
    options = {
        "bootstrap_servers": bootstrap,
        "request_timeout_ms": int(timeout * 1000),
        **(security or KafkaSecurity()).client_options(),
    }
    deadline = time.monotonic() + timeout
    admin = AIOKafkaAdminClient(**options)
    await start_client(admin, bootstrap)
    try:
        counts, created = await _ensure(admin, specs, timeout, deadline)
        if created:
            await _known_everywhere(options, created, deadline)
        return counts
    except KafkaError as exc:
        raise DeliveryError(f"Kafka admin request failed: {exc}", retriable=exc.retriable) from exc
    finally:
        await admin.close()


async def _ensure(
    admin: Any, specs: tuple[TopicSpec, ...], timeout: float, deadline: float
) -> tuple[dict[str, int], list[str]]:
    """Each topic's partition count, and the names of the topics created."""
    from aiokafka.admin.config_resource import (  # noqa: PLC0415
        ConfigResource,
        ConfigResourceType,
    )

    existing = await _create(admin, specs, timeout)
    created = [spec.name for spec in specs if spec.name not in existing]
    counts = {spec.name: spec.partitions for spec in specs}
    if existing:
        counts.update(await _partition_counts(admin, existing, deadline))
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
            await _alter(admin, resources, deadline)
    return counts, created


async def _create(admin: Any, specs: tuple[TopicSpec, ...], timeout: float) -> list[str]:
    """Create the topics of ``specs``; return the names of those that existed already."""
    from aiokafka.admin import NewTopic  # noqa: PLC0415

    default = await _default_replication(admin) if any(s.replication is None for s in specs) else 1
    wanted = [
        NewTopic(
            spec.name,
            spec.partitions,
            default if spec.replication is None else spec.replication,
            topic_configs=spec.configs(),
        )
        for spec in specs
    ]
    response = await admin.create_topics(wanted, timeout_ms=int(timeout * 1000))
    existing = []
    for name, code, *message in response.topic_errors:
        if code == _TOPIC_ALREADY_EXISTS:
            existing.append(name)
        elif code != 0:
            raise DeliveryError(f"cannot create topic {name!r}: error {code} {message}")
    return existing


async def _partition_counts(admin: Any, names: list[str], deadline: float) -> dict[str, int]:
    """The partition count of each of these existing topics. The broker asked may not know yet
    of a topic the controller has just created (a broker of a cluster applies the metadata a
    moment later): it is asked again until ``deadline``, never taken for a topic of 0."""
    while True:
        described = await admin.describe_topics(names)
        settling = []
        for topic in described:
            code = topic["error_code"]
            if code in _SETTLING or (code == 0 and not topic["partitions"]):
                settling.append(topic["topic"])
            elif code != 0:
                raise DeliveryError(f"cannot describe topic {topic['topic']!r}: error {code}")
        if not settling:
            return {topic["topic"]: len(topic["partitions"]) for topic in described}
        if time.monotonic() >= deadline:
            raise DeliveryError(
                f"topics {settling} exist, but Kafka does not describe them yet", retriable=True
            )
        await asyncio.sleep(_SETTLE_POLL)


async def _known_everywhere(options: dict[str, Any], names: list[str], deadline: float) -> None:
    """Wait until every broker that answers describes the topics just created with a leader
    for each partition, so that a client may use them through any broker once
    :func:`ensure_topics` returned (a broker applies new metadata a moment after the
    controller). A broker that does not answer is left out: it serves nobody."""
    from aiokafka import AIOKafkaClient  # noqa: PLC0415
    from aiokafka.errors import KafkaError  # noqa: PLC0415
    from aiokafka.protocol.metadata import MetadataRequest  # noqa: PLC0415

    client = AIOKafkaClient(**options)
    await client.bootstrap()
    try:
        pending = {broker.nodeId for broker in client.cluster.brokers()}
        while pending:
            for node in sorted(pending):
                try:
                    response = await client.send(node, MetadataRequest(names, False))
                except KafkaError:
                    pending.discard(node)
                    continue
                if all(_usable(topic) for topic in response.to_object()["topics"]):
                    pending.discard(node)
            if pending and time.monotonic() >= deadline:
                raise DeliveryError(
                    f"brokers {sorted(pending)} do not describe the new topics {names} yet",
                    retriable=True,
                )
            if pending:
                await asyncio.sleep(_SETTLE_POLL)
    finally:
        await client.close()


def _usable(topic: Mapping[str, Any]) -> bool:
    """A topic of a metadata response is known, with a leader for each of its partitions."""
    partitions = topic["partitions"]
    return (
        topic["error_code"] == 0 and bool(partitions) and all(p["leader"] >= 0 for p in partitions)
    )


async def _alter(admin: Any, resources: list[Any], deadline: float) -> None:
    """Set the configuration of existing topics; a broker that does not know a topic yet is
    asked again until ``deadline`` (as in :func:`_partition_counts`), a refusal raises."""
    while True:
        refused = [
            (name, code, message)
            for response in await admin.alter_configs(resources)
            for code, message, _, name in response.resources
            if code != 0
        ]
        if not refused:
            return
        settling = all(code == _UNKNOWN_TOPIC for _, code, _ in refused)
        if not settling or time.monotonic() >= deadline:
            name, code, message = refused[0]
            raise DeliveryError(
                f"cannot configure topic {name!r}: error {code} {message}", retriable=settling
            )
        await asyncio.sleep(_SETTLE_POLL)


async def _default_replication(admin: Any) -> int:
    """The cluster's ``default.replication.factor``, as one of its brokers has it."""
    from aiokafka.admin.config_resource import (  # noqa: PLC0415
        ConfigResource,
        ConfigResourceType,
    )

    name = "default.replication.factor"
    brokers = (await admin.describe_cluster())["brokers"]
    if not brokers:
        raise DeliveryError("Kafka listed no broker", retriable=True)
    resource = ConfigResource(ConfigResourceType.BROKER, str(brokers[0]["node_id"]), {name: None})
    (response,) = await admin.describe_configs([resource])
    for described in response.to_object()["resources"]:
        values = {e["config_names"]: e["config_value"] for e in described["config_entries"]}
        if described["error_code"] == 0 and str(values.get(name, "")).isdigit():
            return int(values[name])
        problem = described["error_message"] or f"error {described['error_code']}"
        raise DeliveryError(
            f"cannot read the cluster's {name} ({problem}): give TopicSpec a replication"
        )
    raise DeliveryError(f"Kafka did not describe broker {brokers[0]['node_id']}")
